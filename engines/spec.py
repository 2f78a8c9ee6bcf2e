"""What an engine is, as typed and validated values: component options, backend settings and the engine id.

    spec = EngineSpec.of("uvit", "inductor", "fp16", cuda_graph=True, attention="sdpa", persistent_rows=2048)
    spec.id                      # "uvit/inductor/fp16/graph+attention=sdpa,persistent_rows=2048"
    EngineSpec.parse(spec.id)    # == spec

Options are given flat (keyword arguments, `--option KEY=VALUE`, the id), each owned by one field of one dataclass:
the component's options (ClipOptions, UViTOptions with its Fp8Options as `fp8_*`, DecoderOptions) or the backend's
settings. An option that does not apply to the component, the backend or the precision is an error naming what does.
Imports no torch: the reports read engine ids and recipes through it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

COMPONENTS = ("clip", "uvit", "decoder")
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "fp64")
BACKENDS = ("eager", "autocast", "inductor", "onnxruntime", "trt", "trtllm")
ALIASES = {"torch": "eager", "onnx": "onnxruntime", "ort": "onnxruntime", "tensorrt": "trt", "tensorrt_llm": "trtllm"}
REPEATS = ("clip", "uvit")  # the components built of one layer repeated (engines.components.repeated_layers)
TORCH_BACKENDS = ("eager", "autocast", "inductor")  # they run our module transforms (engines.eager.prepare)
# what an exported graph carries of a component's options (an export cannot carry our Triton kernels)
EXPORTED = {"onnxruntime": ("attention", "guidance"), "trt": ("attention", "guidance"), "trtllm": ("guidance",)}


class SpecError(ValueError):
    """An engine spec that does not exist; the message names the option and the valid choices."""


def _check_choices(obj: object) -> None:
    for name, choices in type(obj).CHOICES.items():
        value = getattr(obj, name)
        if value not in choices:
            raise SpecError(f"{_flat(type(obj), name)}={value!r} is not a choice; choose from {list(choices)}")


def _flat(cls: type, name: str) -> str:
    return f"fp8_{name}" if cls is Fp8Options else name


@dataclass(frozen=True)
class Fp8Options:
    """The U-ViT block linears in float8 e4m3 (engines.fp8), given as fp8_scaling=..., fp8_accumulate=..."""

    scaling: str = "tensor"  # one scale per tensor, or per token and per output channel
    accumulate: str = "exact"  # fast: Hopper's FP8 accumulation without promotion to fp32
    quantize: str = "torch"  # triton: fc2's and attn.proj's inputs quantised by plugin/fp8.py
    gelu: str = "erf"  # tanh: the GELU folded into that quantiser, in its tanh form
    layernorm: str = "torch"  # triton: residual add + LayerNorm + quantisation in one launch
    kernels: str = "ours"  # torchao: torchao's float8 inference (engines.alternatives)
    CHOICES: ClassVar = {"scaling": ("tensor", "row"), "accumulate": ("exact", "fast"), "quantize": ("torch", "triton"),
                         "gelu": ("erf", "tanh"), "layernorm": ("torch", "triton"),
                         "kernels": ("ours", "torchao")}  # fmt: skip

    def __post_init__(self) -> None:
        _check_choices(self)
        default = {f.name: f.default for f in fields(self)}
        ours = [
            f"fp8_{k}={getattr(self, k)}" for k in ("quantize", "gelu", "layernorm") if getattr(self, k) != default[k]
        ]
        if self.kernels == "torchao" and ours:
            raise SpecError(f"fp8_kernels=torchao runs torchao's linears, not our kernels: leave {ours} out")
        if self.kernels == "torchao" and self.scaling != "row":
            raise SpecError("fp8_kernels=torchao runs torchao's per-row recipe (its PerRow granularity): add "
                            "fp8_scaling=row")  # fmt: skip
        if self.quantize == "triton" and self.scaling != "row":
            raise SpecError("fp8_quantize=triton computes a scale per row: add fp8_scaling=row")
        if self.gelu == "tanh" and self.quantize != "triton":
            raise SpecError("fp8_gelu=tanh is the GELU inside our Triton quantiser: add fp8_quantize=triton")
        if self.layernorm == "triton" and self.quantize != "triton":
            raise SpecError("fp8_layernorm=triton quantises with our Triton kernels: add fp8_quantize=triton")


@dataclass(frozen=True)
class ClipOptions:
    attention: str = "math"  # math: the reference's; sdpa: torch's fused kernels; triton: plugin/attention.py
    qkv: str = "separate"  # stacked: q, k and v projected by one GEMM
    CHOICES: ClassVar = {"attention": ("math", "sdpa", "triton"), "qkv": ("separate", "stacked")}

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.attention == "triton" and self.qkv != "stacked":
            raise SpecError("attention=triton reads CLIP's q, k and v from one projection: add qkv=stacked")


@dataclass(frozen=True)
class UViTOptions:
    attention: str = "math"  # also sageattention: SageAttention's kernels (engines.alternatives)
    mlp: str = "reference"  # epilogue: fc1 + bias + GELU as one cuBLASLt GEMM (its GELU is the tanh form)
    guidance: str = "batched"  # two-calls: conditional and unconditional as upstream runs them
    fp8: Fp8Options | None = None  # precision fp8 only
    CHOICES: ClassVar = {"attention": ("math", "sdpa", "triton", "sageattention"), "mlp": ("reference", "epilogue"),
                         "guidance": ("batched", "two-calls")}  # fmt: skip

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.fp8 is not None and self.mlp == "epilogue":
            raise SpecError("mlp=epilogue runs fc1 as an fp16 cuBLASLt GEMM, and precision fp8 makes it an FP8 GEMM: "
                            "choose one")  # fmt: skip


@dataclass(frozen=True)
class DecoderOptions:
    attention: str = "math"
    groupnorm: str = "torch"  # stats: statistics and normalisation in plugin/groupstats.py (channels_last)
    channels_last: bool = False
    upsample: str = "reference"  # subpixel: nearest 2x upsampling + 3x3 conv as one 2x2 conv on the small image
    conv_out: str = "reference"  # taps: the last conv as a GEMM over its nine taps and a shifted sum
    CHOICES: ClassVar = {"attention": ("math", "sdpa"), "groupnorm": ("torch", "stats"),
                         "channels_last": (False, True), "upsample": ("reference", "subpixel"),
                         "conv_out": ("reference", "taps")}  # fmt: skip

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.groupnorm == "stats" and not self.channels_last:
            raise SpecError("groupnorm=stats reads channels_last tensors: add channels_last=True")


@dataclass(frozen=True)
class EagerSettings:
    cudnn_benchmark: bool = False  # set around the engine's own calls and restored after
    CHOICES: ClassVar = {"cudnn_benchmark": (False, True)}

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass(frozen=True)
class InductorSettings:
    cudnn_benchmark: bool = False
    mode: str = "default"  # our own CUDA graphs replace Inductor's, so no mode of its own makes them
    persistent_rows: int = 0  # reductions along rows of up to N elements read whole (engines.reductions); 0: Inductor's
    compile: str = "whole"  # regional: each repeated layer compiled alone, one compile serving every layer alike
    CHOICES: ClassVar = {"cudnn_benchmark": (False, True), "mode": ("default", "max-autotune-no-cudagraphs"),
                         "compile": ("whole", "regional")}  # fmt: skip

    def __post_init__(self) -> None:
        _check_choices(self)
        if type(self.persistent_rows) is not int or self.persistent_rows < 0:
            raise SpecError(f"persistent_rows is a row length (0: Inductor's own choice), not {self.persistent_rows!r}")


@dataclass(frozen=True)
class OrtSettings:
    export_dir: str = ""  # keep the exported ONNX graph there
    CHOICES: ClassVar = {}


@dataclass(frozen=True)
class TrtSettings:
    export_dir: str = ""
    workspace_gib: int = 8
    CHOICES: ClassVar = {}


@dataclass(frozen=True)
class TrtllmSettings:
    groupnorm: str = "plugin"  # the decoder's GroupNorm: our Triton kernel as a plugin, or TensorRT's own layers
    workspace_gib: int = 8
    CHOICES: ClassVar = {"groupnorm": ("plugin", "trt")}

    def __post_init__(self) -> None:
        _check_choices(self)


OPTIONS = {"clip": ClipOptions, "uvit": UViTOptions, "decoder": DecoderOptions}
SETTINGS = {"eager": EagerSettings, "autocast": EagerSettings, "inductor": InductorSettings,
            "onnxruntime": OrtSettings, "trt": TrtSettings, "trtllm": TrtllmSettings}  # fmt: skip


def defaults(backend: str) -> dict[str, object]:
    """Every component option's default and `backend`'s settings', flat: what a transform reads where the spec is
    silent (each transform reads only its own component's)."""
    out: dict[str, object] = {}
    for cls in (*OPTIONS.values(), Fp8Options, SETTINGS[backend]):
        out.update({_flat(cls, f.name): f.default for f in fields(cls) if f.name != "fp8"})
    return out


def check_backend(backend: str) -> str:
    name = ALIASES.get(backend, backend)
    if name not in BACKENDS:
        raise SpecError(f"unknown backend {backend!r}; choose from {list(BACKENDS)} (aliases {ALIASES})")
    return name


def _coerce(name: str, value: object, default: object) -> object:
    """A value as its field's type: from a string where it came from a command line or an id."""
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise SpecError(f"{name} is True or False, not {value!r}")
    elif isinstance(default, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{name} is a whole number, not {value!r}")
    elif not isinstance(value, str):
        raise SpecError(f"{name} is one of the words {name} takes, not {value!r}")
    return value


def _accepts(cls: type) -> dict[str, tuple[type, str]]:
    """flat option name -> (owner class, field name)"""
    out = {}
    for f in fields(cls):
        if f.name == "fp8":
            out.update({_flat(Fp8Options, g.name): (Fp8Options, g.name) for g in fields(Fp8Options)})
        else:
            out[f.name] = (cls, f.name)
    return out


@dataclass(frozen=True)
class EngineSpec:
    component: str
    backend: str = "eager"
    precision: str = "fp32"
    cuda_graph: bool = False
    options: ClipOptions | UViTOptions | DecoderOptions | None = None  # None: the component's defaults
    settings: EagerSettings | InductorSettings | OrtSettings | TrtSettings | TrtllmSettings | None = None
    extras: tuple[tuple[str, str], ...] = ()  # named, not built: uint8=1, fault=...

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise SpecError(f"unknown component {self.component!r}; choose from {list(COMPONENTS)}")
        object.__setattr__(self, "backend", check_backend(self.backend))
        if self.precision not in PRECISIONS:
            raise SpecError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        options = self.options if self.options is not None else OPTIONS[self.component]()
        settings = self.settings if self.settings is not None else SETTINGS[self.backend]()
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "settings", settings)
        if type(options) is not OPTIONS[self.component] or type(settings) is not SETTINGS[self.backend]:
            raise SpecError(f"{self.component} on {self.backend} takes {OPTIONS[self.component].__name__} and "
                            f"{SETTINGS[self.backend].__name__}")  # fmt: skip
        if self.precision == "fp8" and (self.component != "uvit" or self.backend not in ("eager", "inductor")):
            raise SpecError("fp8 applies to the U-ViT's block linears on the eager and inductor backends; build clip "
                            "and the decoder in fp16")  # fmt: skip
        if self.component == "uvit" and (options.fp8 is not None) != (self.precision == "fp8"):
            raise SpecError(f"the fp8_* options apply to precision fp8, not {self.precision}")
        if self.backend == "autocast" and self.precision not in ("fp16", "bf16"):
            raise SpecError("the autocast backend runs fp32 weights under fp16 or bf16 autocast; choose fp16 or bf16")
        if isinstance(settings, InductorSettings) and settings.compile == "regional" and self.component not in REPEATS:
            raise SpecError(f"compile=regional compiles the layers that repeat, which {list(REPEATS)} have; the "
                            f"{self.component}'s blocks differ in shape one to the next: leave it out")  # fmt: skip
        if isinstance(settings, TrtllmSettings) and self.component != "decoder" and settings.groupnorm != "plugin":
            raise SpecError("groupnorm applies to the decoder, the only component with GroupNorms")
        _check_exported(self.backend, _flatten(options))

    @classmethod
    def of(cls, component: str, backend: str = "eager", precision: str = "fp32", cuda_graph: bool = False,
           extras: tuple[tuple[str, str], ...] = (), **options: object) -> EngineSpec:  # fmt: skip
        """From flat options, each checked to apply to this component, backend and precision."""
        if component not in OPTIONS:
            raise SpecError(f"unknown component {component!r}; choose from {list(COMPONENTS)}")
        backend = check_backend(backend)
        mine, theirs = _accepts(OPTIONS[component]), _accepts(SETTINGS[backend])
        values: dict[type, dict[str, object]] = {}
        for key, value in options.items():
            if key not in mine and key not in theirs:
                raise SpecError(f"option {key!r} does not apply to {component} on {backend}; it takes "
                                f"{sorted({*mine, *theirs})}")  # fmt: skip
            owner, name = theirs.get(key) or mine[key]  # trtllm: groupnorm is its setting
            default = {f.name: f.default for f in fields(owner)}[name]
            values.setdefault(owner, {})[name] = _coerce(key, value, default)
        _check_exported(backend, {k: v for k, v in options.items() if k in mine and k not in theirs})
        fp8 = Fp8Options(**values.pop(Fp8Options, {})) if precision == "fp8" and component == "uvit" else None
        if Fp8Options in values or (fp8 is None and any(k.startswith("fp8_") for k in options)):
            raise SpecError(f"the fp8_* options apply to the U-ViT at precision fp8, not {component} at {precision}")
        comp = OPTIONS[component](**values.get(OPTIONS[component], {}), **({"fp8": fp8} if fp8 else {}))
        settings = SETTINGS[backend](**values.get(SETTINGS[backend], {}))
        return cls(component, backend, precision, cuda_graph, comp, settings, tuple(extras))

    def flat(self) -> dict[str, object]:
        """The options that differ from their defaults, flat and sorted: what the id shows."""
        return dict(sorted({**_flatten(self.options), **_flatten(self.settings)}.items()))

    def kwargs(self) -> dict[str, object]:
        """For engines.build_engine and engines.sampler.build_sampler."""
        return {"backend": self.backend, "precision": self.precision, "cuda_graph": self.cuda_graph, **self.flat()}

    @property
    def id(self) -> str:
        parts = [self.component, self.backend, self.precision] + (["graph"] if self.cuda_graph else [])
        extras = {**self.flat(), **dict(self.extras)}
        return "/".join(parts) + ("+" + ",".join(f"{k}={v}" for k, v in sorted(extras.items())) if extras else "")

    @classmethod
    def parse(cls, text: str) -> EngineSpec:
        """The inverse of `id`."""
        head, _, tail = text.partition("+")
        parts = head.split("/")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "graph"):
            raise SpecError(f"{text!r} is not an engine id: component/backend/precision[/graph][+key=value,...]")
        pairs = [kv.split("=", 1) for kv in tail.split(",")] if tail else []
        if any(len(kv) != 2 for kv in pairs):
            raise SpecError(f"{text!r} is not an engine id: options are key=value, separated by commas")
        options = {k: v for k, v in pairs if k not in EXTRAS}
        extras = tuple((k, v) for k, v in pairs if k in EXTRAS)
        return cls.of(parts[0], parts[1], parts[2], len(parts) == 4, extras, **options)


def _check_exported(backend: str, given: dict[str, object]) -> None:
    if backend not in EXPORTED:
        return
    foreign = sorted(k for k in given if k not in EXPORTED[backend])
    if foreign:
        carried = list(EXPORTED[backend])
        raise SpecError(f"{foreign} do not apply to {backend}: an exported graph carries only {carried}")
    if given.get("attention") in ("triton", "sageattention"):
        raise SpecError(f"attention={given['attention']} is a Triton kernel, which an export to {backend} cannot carry")


EXTRAS = ("uint8", "fault")  # in an engine's id, not options: the decoder's uint8 output, an injected fault


def _flatten(obj: object) -> dict[str, object]:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "fp8":
            out.update(_flatten(value) if value is not None else {})
        elif value != f.default:
            out[_flat(type(obj), f.name)] = value
    return out
