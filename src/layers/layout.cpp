// Activation layouts between plans (Layer::make_layout_plan): plain/blocked oneDNN descriptors,
// the reorder wrapper that adapts a plan to the layouts around it, and the default layout-aware
// plans (the plain plan behind reorders). Convolutions pick blocked layouts (conv2d.cpp) and
// pooling / ReLU / Flatten keep them, so activations stay blocked from one convolution to the
// next; the wrapper reorders only where a layer needs plain data (Linear after Flatten).
#include "lowsync/core/error.hpp"
#include "lowsync/layers/layer.hpp"

namespace lowsync::layers {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

tag plain_tag(int ndims) {
  switch (ndims) {
    case 1: return tag::a;
    case 2: return tag::ab;
    case 3: return tag::abc;
    case 4: return tag::abcd;
    case 5: return tag::abcde;
    default: fail("activation layout of {} dimensions", ndims);
  }
}

// One side of the wrapper: a plan-owned buffer in the inner layout and the reorders to and from
// the outer one; inactive when the two layouts are equal.
template <class T>
struct Side {
  bool active = false;
  lowsync::memory::TrackedBuffer<std::uint8_t> buf;
  memory outer, inner;
  dnnl::primitive to_inner, to_outer;

  Side(Executor& exec, const Layout& outer_md, const Layout& inner_md, const char* label) {
    if (outer_md == inner_md) return;
    if (outer_md.dims() != inner_md.dims() || outer_md.data_type() != inner_md.data_type())
      fail("layout reorder between different shapes or data types ({})", label);
    active = true;
    auto& eng = exec.engine();
    buf = lowsync::memory::TrackedBuffer<std::uint8_t>(label, inner_md.get_size());
    outer = memory(outer_md, eng, nullptr);
    inner = memory(inner_md, eng, buf.data());
    to_inner = dnnl::reorder(dnnl::reorder::primitive_desc(eng, outer_md, eng, inner_md));
    to_outer = dnnl::reorder(dnnl::reorder::primitive_desc(eng, inner_md, eng, outer_md));
  }
  T* inner_ptr() const { return reinterpret_cast<T*>(buf.data()); }
  // outer -> inner buffer; returns the pointer the inner plan reads.
  const T* in(Executor& exec, const T* outer_ptr) {
    if (!active) return outer_ptr;
    outer.set_data_handle(const_cast<T*>(outer_ptr));
    exec.run(to_inner, {{DNNL_ARG_FROM, outer}, {DNNL_ARG_TO, inner}});
    return inner_ptr();
  }
  void out(Executor& exec, T* outer_ptr) {
    outer.set_data_handle(outer_ptr);
    exec.run(to_outer, {{DNNL_ARG_FROM, inner}, {DNNL_ARG_TO, outer}});
  }
};

template <class T, class Base>
class ReorderedPlan final : public Base {
 public:
  ReorderedPlan(std::unique_ptr<Base> inner, Executor& exec, const Layout& outer_in, const Layout& inner_in,
                const Layout& inner_out, const Layout& outer_out)
      : inner_(std::move(inner)), exec_(exec), x_(exec, outer_in, inner_in, "layout.x"),
        dx_(exec, outer_in, inner_in, "layout.dx"), y_(exec, outer_out, inner_out, "layout.y"),
        dy_(exec, outer_out, inner_out, "layout.dy") {}

  void forward(const T* x, T* y, bool training) override {
    const T* xi = x_.in(exec_, x);
    inner_->forward(xi, y_.active ? y_.inner_ptr() : y, training);
    if (y_.active) y_.out(exec_, y);
  }

  void backward(const T* x, const T* y, const T* dy, T* dx) override {
    const T* xi = x_.in(exec_, x);
    const T* yi = y_.in(exec_, y);
    const T* dyi = dy_.in(exec_, dy);
    T* dxi = dx == nullptr ? nullptr : (dx_.active ? dx_.inner_ptr() : dx);
    inner_->backward(xi, yi, dyi, dxi);
    if (dx != nullptr && dx_.active) dx_.out(exec_, dx);
  }

 private:
  std::unique_ptr<Base> inner_;
  Executor& exec_;
  Side<T> x_, dx_, y_, dy_;
};

}  // namespace

Layout plain_layout(int batch, const Shape& shape, dnnl::memory::data_type type) {
  memory::dims dims{batch};
  dims.insert(dims.end(), shape.begin(), shape.end());
  return {dims, type, plain_tag(static_cast<int>(dims.size()))};
}

bool is_plain(const Layout& layout) { return layout == plain_like(layout); }

Layout plain_like(const Layout& layout) {
  const auto dims = layout.dims();
  return {dims, layout.data_type(), plain_tag(static_cast<int>(dims.size()))};
}

std::unique_ptr<LayerPlan> make_reordered_plan(std::unique_ptr<LayerPlan> inner, Executor& exec,
                                               const Layout& outer_in, const Layout& inner_in,
                                               const Layout& inner_out, const Layout& outer_out) {
  if (outer_in == inner_in && inner_out == outer_out) return inner;
  return std::make_unique<ReorderedPlan<float, LayerPlan>>(std::move(inner), exec, outer_in, inner_in, inner_out,
                                                           outer_out);
}

std::unique_ptr<LayerPlan16> make_reordered_plan16(std::unique_ptr<LayerPlan16> inner, Executor& exec,
                                                   const Layout& outer_in, const Layout& inner_in,
                                                   const Layout& inner_out, const Layout& outer_out) {
  if (outer_in == inner_in && inner_out == outer_out) return inner;
  return std::make_unique<ReorderedPlan<std::uint16_t, LayerPlan16>>(std::move(inner), exec, outer_in, inner_in,
                                                                     inner_out, outer_out);
}

Planned<LayerPlan> Layer::make_layout_plan(int batch, Executor& exec, std::vector<float*> params,
                                           std::vector<float*> grads, const Layout& in) {
  const Layout out = plain_layout(batch, output_shape(), in.data_type());
  auto plan = make_plan(batch, exec, std::move(params), std::move(grads));
  if (is_plain(in)) return {std::move(plan), out};
  return {make_reordered_plan(std::move(plan), exec, in, plain_like(in), out, out), out};
}

Planned<LayerPlan16> Layer::make_layout_plan16(int batch, Executor& exec, const Native16Tensors& t,
                                               std::span<float> stage, const Layout& in) {
  const Layout out = plain_layout(batch, output_shape(), in.data_type());
  auto plan = make_plan16(batch, exec, t, stage);
  if (is_plain(in)) return {std::move(plan), out};
  return {make_reordered_plan16(std::move(plan), exec, in, plain_like(in), out, out), out};
}

}  // namespace lowsync::layers
