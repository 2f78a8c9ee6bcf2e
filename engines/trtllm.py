"""TensorRT-LLM 1.2: each component written as a tensorrt_llm.Module network (engines.trtllm_net), our weights copied
in, built fp32 / fp16 / bf16 by tensorrt_llm.Builder and run through tensorrt_llm.runtime.Session.

Every layer output the caller marks becomes a network output (Tensor.mark_output), the way the seed hunted its fp16
bugs; GroupNorm runs our Triton kernel as a TensorRT-LLM Python plugin (`groupnorm="plugin"`, the default) or
TensorRT's normalisation layer on an fp32 copy (`"trt"`). TensorRT-LLM cannot be installed on our machines, so this
engine is written against the published API and not exercised here (README). What needs no TensorRT, the weight map
below, is tested in CI; the rest is tested where tensorrt_llm imports.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from engines import BackendUnavailable, register_engine, register_limits
from engines.runtime import check_inputs, finish
from engines.spec import defaults
from reference import autoencoder as ae
from reference.clip import TextEncoder
from reference.pipeline import GuidedStep

BUILDER_PRECISION = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NORMS = (nn.LayerNorm, nn.GroupNorm)  # their parameters stay fp32: the networks normalise in fp32


@register_limits("trtllm")
def limits(*, device: torch.device, precision: str, cuda_graph: bool) -> None:
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT-LLM engines run on a CUDA device; this one would run on {device.type}")
    if precision not in BUILDER_PRECISION:
        raise BackendUnavailable(f"TensorRT-LLM engines here are fp32, fp16 or bf16, not {precision}")


def component_of(module: nn.Module) -> str:
    for kind, name in ((TextEncoder, "clip"), (GuidedStep, "uvit"), (ae.AutoencoderDecoder, "decoder")):
        if isinstance(module, kind):
            if name == "uvit" and not module.batched:
                raise ValueError("the TensorRT-LLM U-ViT network is the batch-2 guided step; use guidance='batched'")
            return name
    raise ValueError(f"TensorRT-LLM has no network for {type(module).__name__}")


def weights(module: nn.Module, precision: str) -> dict[str, Tensor]:
    """The reference component's parameters under the TensorRT-LLM network's names, in the dtypes it declares.

    Names are the reference's (CLIP without `text_model.`), except that CLIP's q/k/v projections become one stacked
    `qkv` Linear, as the U-ViT's already is. Norm parameters stay fp32, the rest take the engine's dtype.
    """
    norms = {f"{n}.{p}" for n, m in module.named_modules() if isinstance(m, NORMS) for p in ("weight", "bias")}
    out: dict[str, Tensor] = {}
    for name, p in module.named_parameters():
        dtype = torch.float32 if name in norms else DTYPES[precision]
        out[name.replace("clip.text_model.", "clip.")] = p.detach().to("cpu", dtype).contiguous()
    for key in [k for k in out if k.endswith(".self_attn.q_proj.weight")]:
        stem = key[: -len("q_proj.weight")]
        for kind in ("weight", "bias"):
            out[f"{stem}qkv.{kind}"] = torch.cat([out.pop(f"{stem}{x}_proj.{kind}") for x in "qkv"])
    return out


def input_dtypes(component: str) -> dict[str, torch.dtype]:
    """What each network input is declared as (inputs are cast to it): token ids int32, everything else fp32."""
    return {"input_ids": torch.int32} if component == "clip" else {}


def fill(network_module, values: dict[str, Tensor]) -> None:
    """Copy `values` into the network's parameters, naming any name or shape that does not line up."""
    params = dict(network_module.named_parameters())
    missing, extra = sorted(set(params) - set(values)), sorted(set(values) - set(params))
    if missing or extra:
        raise ValueError(f"TensorRT-LLM network and reference weights differ: missing {missing[:5]}, extra {extra[:5]}")
    for name, p in params.items():
        if tuple(p.shape) != tuple(values[name].shape):
            raise ValueError(f"{name}: network declares {tuple(p.shape)}, reference has {tuple(values[name].shape)}")
        p.value = values[name]


@register_engine("trtllm")
def build(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    if fault is not None:
        raise ValueError("faults are injected into PyTorch modules, and the trtllm backend builds its own network")
    import tensorrt as trt
    import tensorrt_llm
    from tensorrt_llm._utils import str_dtype_to_trt, torch_dtype_to_trt, trt_dtype_to_torch
    from tensorrt_llm.functional import Tensor as NetTensor
    from tensorrt_llm.network import net_guard
    from tensorrt_llm.runtime import Session

    from engines import trtllm_net as net

    opts = {**defaults("trtllm"), **options}  # checked by engines.spec
    module, marks = marked.module, marked.marks
    component = component_of(module)
    cfg = marked_config(module)
    t0 = time.perf_counter()
    dtype = str_dtype_to_trt(BUILDER_PRECISION[precision])
    extra = {"groupnorm": opts["groupnorm"]} if component == "decoder" else {}
    tree = net.NETWORKS[component](cfg, dtype=dtype, **extra)
    fill(tree, weights(module, precision))

    builder = tensorrt_llm.Builder()
    config = builder.create_builder_config(precision=BUILDER_PRECISION[precision], name=f"unidiffuser-{component}")
    trt_config = config.trt_builder_config
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_gib"] * (1 << 30)))
    if precision == "fp32":
        trt_config.clear_flag(trt.BuilderFlag.TF32)  # strict fp32, like the reference
    network = builder.create_network()
    cast_to = input_dtypes(component)
    with net_guard(network):
        network.set_named_parameters(tree.named_parameters())
        feeds = {
            n: NetTensor(name=n, dtype=torch_dtype_to_trt(cast_to.get(n, torch.float32)), shape=list(t.shape))
            for n, t in example_inputs.items()
        }
        net.Recorded.executed.clear()
        out = tree(**feeds)
        path = {id(m): n for n, m in tree.named_modules()}
        names = []
        for m, t in net.Recorded.executed:  # execution order, first run of a module
            name = path.get(id(m))
            if name in marks and name not in names:
                t.mark_output(name, t.dtype)
                names.append(name)
        out.mark_output("output", out.dtype)
    if sorted(names) != sorted(marks):
        raise RuntimeError(f"TensorRT-LLM network has no layer for marks {sorted(set(marks) - set(names))}")
    serialized = builder.build_engine(network, config)
    built = time.perf_counter() - t0
    session = Session.from_serialized_engine(serialized)
    engine = session.engine
    shapes = {
        n: (tuple(engine.get_tensor_shape(n)), trt_dtype_to_torch(engine.get_tensor_dtype(n)))
        for n in [*names, "output"]
    }
    static = dict(example_inputs)

    def run(**inputs: Tensor) -> dict[str, Tensor]:
        inputs = check_inputs(static, inputs)
        feeds = {n: t.to(cast_to.get(n, torch.float32)).contiguous() for n, t in inputs.items()}
        outs = {n: torch.empty(shape, dtype=dt, device=device) for n, (shape, dt) in shapes.items()}
        if not session.run(feeds, outs, torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT-LLM session.run failed to enqueue (see its log)")
        return outs

    fn, seconds = finish(run, precision=precision, example_inputs=example_inputs, cuda_graph=cuda_graph)
    meta = {"backend": "trtllm", "tensorrt_llm": tensorrt_llm.__version__, "norm_precision": "fp32", **opts}
    return fn, {"trtllm_build": built, **seconds}, meta


def marked_config(module: nn.Module) -> SimpleNamespace:
    """The sizes a network is built from, read off the reference module (the engine sees only the module)."""
    if isinstance(module, TextEncoder):
        c = module.clip.config
        clip = SimpleNamespace(
            vocab_size=c.vocab_size, width=c.hidden_size, layers=c.num_hidden_layers, heads=c.num_attention_heads,
            mlp=c.intermediate_size, max_tokens=c.max_position_embeddings,
        )  # fmt: skip
        return SimpleNamespace(clip=clip, uvit=SimpleNamespace(text_dim=module.encode_prefix.out_features))
    if isinstance(module, GuidedStep):
        return SimpleNamespace(uvit=module.uvit.cfg)
    return SimpleNamespace(autoencoder=module.cfg)
