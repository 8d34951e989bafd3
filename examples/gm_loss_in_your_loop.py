"""The LVM-Med graph-matching loss in your own training loop.

Any backbone that gives pooled features [B, D] (and, for the local term, a feature map [B, D, R, S]) can be
trained with `lvmmed_ext.gm_loss`: the batch is cut into graphs of `graph_size` images, each view's kNN graph is
built, the two graphs are matched by the QAP solver, and the loss is the Hamming distance between the matching
and the identity, with an IMLE gradient. (`lvmmed_ext.LVMMedHead` packages a projector, a GCN and this loss.)
Here a tiny CNN with a linear projector learns to match two noisy, shifted views of smooth random "images"; the
positions tell the local term where each feature-map cell lies in the original image. A few seconds on a CPU.
"""

import torch
from torch import nn

import lvmmed_ext

torch.manual_seed(0)
B, C, H = 64, 1, 32  # batch of 64 one-channel 32x32 images: 4 graphs of 16 images
R = 4  # the CNN's feature map is R x R cells, each covering 8x8 pixels


class TinyCNN(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(C, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, dim, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip

    def forward(self, x):
        fmap = self.body(x)  # [B, dim, R, R]
        return fmap.mean((2, 3)), fmap


def view(images: torch.Tensor, shift: int):
    """A noisy copy shifted by `shift` pixels, and the centres of its R x R cells in original-image pixels."""
    x = torch.roll(images, shifts=shift, dims=3) + 0.3 * torch.randn_like(images)
    step = H / R
    centres = torch.arange(R) * step + step / 2
    rows, cols = torch.meshgrid(centres, centres - shift, indexing="ij")  # undo the shift: original coordinates
    pos = torch.stack([rows, cols], -1).reshape(1, R * R, 2).expand(images.shape[0], -1, -1)
    return x, pos.contiguous()


backbone = TinyCNN()
projector = nn.Linear(64, 32)
opt = torch.optim.Adam([*backbone.parameters(), *projector.parameters()], lr=2e-3)


def loss_of(x_s, pos_s, x_t, pos_t, **noise):
    (h_s, map_s), (h_t, map_t) = backbone(x_s), backbone(x_t)
    y_s = map_s.flatten(2).transpose(1, 2)  # [B, R*R, D]: one feature vector per cell, as gm_loss expects
    y_t = map_t.flatten(2).transpose(1, 2)
    return lvmmed_ext.gm_loss(projector(h_s), projector(h_t), y_s=y_s, y_t=y_t, pos_s=pos_s, pos_t=pos_t,
                              graph_size=16, k=5, alpha=0.8, lam=80.0, **noise)  # fmt: skip


# the "dataset": 64 smooth random images (low-frequency noise), the same every step; new views each step
images = nn.functional.interpolate(torch.randn(B, C, 8, 8), size=(H, H), mode="bilinear")
probe_s, probe_t = view(images, shift=2), view(images, shift=-2)  # a fixed pair of views to measure matching on


@torch.no_grad()
def probe_loss() -> float:
    """The loss on the fixed probe views without noise: 2 x wrong matches per graph of 16 (0 = all matched)."""
    return loss_of(*probe_s, *probe_t, noise="none").item()


print(f"before training: probe loss {probe_loss():.2f}")

for step in range(61):
    x_s, pos_s = view(images, shift=int(torch.randint(-3, 4, ())))
    x_t, pos_t = view(images, shift=int(torch.randint(-3, 4, ())))
    loss = loss_of(x_s, pos_s, x_t, pos_t, noise="gumbel", noise_scale=0.1)  # perturb-and-MAP
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 20 == 0:
        print(f"step {step:3d}: gm loss {loss.item():5.2f} on this step's views, probe loss {probe_loss():5.2f}")

print(f"after training: probe loss {probe_loss():.2f}")
