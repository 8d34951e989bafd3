// Internal helpers of the CPU QAP kernels.
#pragma once
#include "lvmmed/detail/qap_engine.h"
#include "lvmmed/qap.h"

namespace lvmmed::cpu {

// The view of graph g of a batch (null edge/dense pointers when the batch has no such term).
template <typename T>
detail::QAPGraph<T> graph_at(const QAPInputs<T>& in, const QAPShape& s, index_t g);

}  // namespace lvmmed::cpu
