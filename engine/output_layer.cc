#include "engine/output_layer.h"

#include <algorithm>
#include <cstring>

namespace trams::engine {

OutputLayer::OutputLayer(const ModelWeights& weights)
    : w_(weights), d_model_(weights.config.d_model), vocab_size_(weights.config.vocab_size) {
  const ModelConfig& c = weights.config;
  ends_ = c.cutoff_ends();
  const int n_clusters = c.n_clusters();
  const OutputCluster& first = weights.output[0];
  head_size_ = first.weight.rows + n_clusters;
  const int64_t dim = first.weight.cols;
  head_weight_.resize(static_cast<size_t>(head_size_ * dim));
  head_bias_.resize(static_cast<size_t>(head_size_));
  std::memcpy(head_weight_.data(), first.weight.data, sizeof(float) * first.weight.rows * dim);
  std::memcpy(head_bias_.data(), first.bias.data, sizeof(float) * first.weight.rows);
  if (n_clusters > 0) {
    std::memcpy(head_weight_.data() + first.weight.rows * dim, weights.cluster_weight.data,
                sizeof(float) * n_clusters * dim);
    std::memcpy(head_bias_.data() + first.weight.rows, weights.cluster_bias.data, sizeof(float) * n_clusters);
  }
}

const float* OutputLayer::Project(ThreadPool* pool, int cluster, const float* hidden, int64_t rows,
                                  std::vector<float>* scratch) const {
  const Matrix& proj = w_.output[cluster].proj;
  if (proj.empty()) return hidden;
  const int64_t dim = proj.cols;
  scratch->resize(static_cast<size_t>(rows * dim));
  // proj is [d_model, dim]: hidden @ proj.
  (void)pool;  // rows x d_model x dim is small next to the logits product
  MatMulNN(hidden, d_model_, proj.data, static_cast<int>(dim), scratch->data(), static_cast<int>(dim), rows, dim,
           d_model_);
  return scratch->data();
}

void OutputLayer::HeadLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, std::vector<float>* head) const {
  std::vector<float> projected;
  const float* x = Project(pool, 0, hidden, rows, &projected);
  const int dim = static_cast<int>(w_.output[0].weight.cols);
  head->resize(static_cast<size_t>(rows * head_size_));
  for (int64_t r = 0; r < rows; ++r) std::memcpy(head->data() + r * head_size_, head_bias_.data(), sizeof(float) * head_size_);
  LinearNT(pool, x, dim, head_weight_.data(), dim, head->data(), static_cast<int>(head_size_), rows, head_size_, dim,
           1.0f);
  for (int64_t r = 0; r < rows; ++r) LogSoftmaxRow(head->data() + r * head_size_, head_size_);
}

void OutputLayer::TargetLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, const int32_t* targets,
                                 float* out) const {
  std::vector<float> head;
  HeadLogProbs(pool, hidden, rows, &head);
  const int n_clusters = static_cast<int>(ends_.size()) - 2;
  std::vector<int64_t> tail_rows;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < ends_[1]) out[r] = head[r * head_size_ + targets[r]];
  }
  std::vector<float> gathered, projected, logits;
  for (int i = 1; i <= n_clusters; ++i) {
    tail_rows.clear();
    for (int64_t r = 0; r < rows; ++r) {
      if (targets[r] >= ends_[i] && targets[r] < ends_[i + 1]) tail_rows.push_back(r);
    }
    if (tail_rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(tail_rows.size());
    gathered.resize(static_cast<size_t>(n * d_model_));
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(gathered.data() + t * d_model_, hidden + tail_rows[t] * d_model_, sizeof(float) * d_model_);
    }
    const OutputCluster& oc = w_.output[i];
    const float* x = Project(pool, i, gathered.data(), n, &projected);
    const int dim = static_cast<int>(oc.weight.cols);
    const int64_t size = oc.weight.rows;
    logits.resize(static_cast<size_t>(n * size));
    for (int64_t t = 0; t < n; ++t) std::memcpy(logits.data() + t * size, oc.bias.data, sizeof(float) * size);
    LinearNT(pool, x, dim, oc.weight.data, dim, logits.data(), static_cast<int>(size), n, size, dim, 1.0f);
    for (int64_t t = 0; t < n; ++t) {
      float* row = logits.data() + t * size;
      LogSoftmaxRow(row, size);
      const int64_t r = tail_rows[t];
      out[r] = head[r * head_size_ + ends_[1] + i - 1] + row[targets[r] - ends_[i]];
    }
  }
}

void OutputLayer::FullLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, float* out) const {
  std::vector<float> head;
  HeadLogProbs(pool, hidden, rows, &head);
  const int n_clusters = static_cast<int>(ends_.size()) - 2;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out + r * vocab_size_, head.data() + r * head_size_, sizeof(float) * ends_[1]);
  }
  std::vector<float> projected, logits;
  for (int i = 1; i <= n_clusters; ++i) {
    const OutputCluster& oc = w_.output[i];
    const float* x = Project(pool, i, hidden, rows, &projected);
    const int dim = static_cast<int>(oc.weight.cols);
    const int64_t size = oc.weight.rows;
    logits.resize(static_cast<size_t>(rows * size));
    for (int64_t r = 0; r < rows; ++r) std::memcpy(logits.data() + r * size, oc.bias.data, sizeof(float) * size);
    LinearNT(pool, x, dim, oc.weight.data, dim, logits.data(), static_cast<int>(size), rows, size, dim, 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * size;
      LogSoftmaxRow(row, size);
      const float cluster_lp = head[r * head_size_ + ends_[1] + i - 1];
      float* o = out + r * vocab_size_ + ends_[i];
      for (int64_t v = 0; v < size; ++v) o[v] = cluster_lp + row[v];
    }
  }
}

}  // namespace trams::engine
