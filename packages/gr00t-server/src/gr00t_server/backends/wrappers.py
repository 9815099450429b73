"""Drop-in replacements for the exported sub-modules: same forward signature, run by an ONNX/TRT runner.

A runner is any callable `runner({input_name: tensor}) -> {output_name: tensor}` with `input_names`;
it converts inputs to its own dtypes and device. The wrappers cast outputs back to the model dtype.
"""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import nn

from gr00t_server.backends.common import BackendError, model_of

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """An ONNX Runtime session or TensorRT engine called with named torch tensors."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ...


class ExportedModule(nn.Module):
    """Base of the wrappers: holds the runner, the name of the sub-module and the model dtype."""

    def __init__(self, runner: Runner, name: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.runner = runner
        self.submodule_name = name
        self.output_dtype = dtype

    def run(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Call the runner and cast floating outputs to the model dtype."""
        outputs = self.runner(feeds)
        return {k: v.to(self.output_dtype) if v.is_floating_point() else v for k, v in outputs.items()}

    def extra_repr(self) -> str:
        return f"{self.submodule_name}, runner={type(self.runner).__name__}"


class ExportedVLSelfAttention(ExportedModule):
    """`vl_self_attention`: `[B,S,C]` -> `[B,S,C]`."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Run the exported VL self-attention."""
        return self.run(hidden_states=hidden_states)["output"]


class ExportedCategoryMLP(ExportedModule):
    """`state_encoder` / `action_decoder`: `(x [B,T,in], embodiment_id [B])` -> `[B,T,out]`."""

    def __init__(self, runner: Runner, name: str, dtype: torch.dtype, input_name: str) -> None:
        super().__init__(runner, name, dtype)
        self.input_name = input_name

    def forward(self, x: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """Run the exported embodiment-conditioned MLP."""
        return self.run(**{self.input_name: x, "embodiment_id": embodiment_id.long()})["output"]


class ExportedActionEncoder(ExportedModule):
    """`action_encoder`: `(actions [B,A,D], timesteps [B], embodiment_id [B])` -> `[B,A,W]`."""

    def forward(self, actions: torch.Tensor, timesteps: torch.Tensor, embodiment_id: torch.Tensor) -> torch.Tensor:
        """Run the exported action encoder."""
        return self.run(actions=actions, timesteps=timesteps.long(), embodiment_id=embodiment_id.long())["output"]


class ExportedDiT(ExportedModule):
    """`action_head.model` (AlternateVLDiT): sa_embs, vl_embs, timestep, masks -> `[B,1+A,hidden]`."""

    def __init__(self, runner: Runner, dtype: torch.dtype) -> None:
        super().__init__(runner, "dit", dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        image_mask: Optional[torch.Tensor] = None,
        backbone_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Run the exported DiT (masks default to all-text / all-valid)."""
        batch, length = encoder_hidden_states.shape[:2]
        device = encoder_hidden_states.device
        if image_mask is None:
            image_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        if backbone_attention_mask is None:
            backbone_attention_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        return self.run(
            sa_embs=hidden_states, vl_embs=encoder_hidden_states, timestep=timestep.long(),
            image_mask=image_mask.bool(), backbone_attention_mask=backbone_attention_mask.bool(),
        )["output"]


class ExportedVision(ExportedModule):
    """Vision tower for one fixed image grid; images run as a batch dimension. `camera_keys`: the policy's video keys,
    in the order the processor lays out each row's images (time-major, then camera), to name them in errors."""

    def __init__(
        self, runner: Runner, dtype: torch.dtype, grid_thw: list[int], camera_keys: Sequence[str] = ()
    ) -> None:
        super().__init__(runner, "vit", dtype)
        self.grid_thw = [int(v) for v in grid_thw]
        self.camera_keys = list(camera_keys)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`[N_patches, 1536]`, `[n_img, 3]` -> (`image_embeds [N/4, C]`, deepstack list of `[N/4, C]`)."""
        rows = grid_thw.tolist()
        if len({tuple(row) for row in rows}) > 1:  # no --image-size serves this: one export, one grid for all cameras
            raise ValueError(
                f"this request's camera frames make different image grids (t,h,w in patches): {self._grids_of(rows)}; "
                "a full_pipeline export's ViT serves one frame size for all cameras (traced for grid "
                f"{self.grid_thw}). Send every camera's frames in one size, or export with `--mode action_head`, "
                "which keeps the ViT in PyTorch."
            )
        if rows and rows[0] != self.grid_thw:
            raise ValueError(
                f"the exported ViT was traced for image grid {self.grid_thw} (t,h,w in patches); got "
                f"{grid_thw.tolist()}. Re-export with your cameras' frame size: `gr00t-server export --image-size "
                "HEIGHT WIDTH ...` (a full_pipeline export's ViT serves one image size)."
            )
        images = int(grid_thw.shape[0])
        out = self.run(pixel_values=pixel_values.reshape(images, -1, pixel_values.shape[-1]))
        width = out["image_embeds"].shape[-1]
        deepstack = [d.reshape(-1, width) for d in out["deepstack_features"].unbind(0)]
        return out["image_embeds"].reshape(-1, width), deepstack

    def _grids_of(self, rows: list[list[int]]) -> str:
        """Each camera's grid(s) when the rows lay out `camera_keys` (row i is camera i mod their count), else the
        grids in the order they came."""
        if not self.camera_keys or len(rows) % len(self.camera_keys):
            return ", ".join(str(row) for row in dict.fromkeys(tuple(row) for row in rows))
        by_camera: dict[str, list[list[int]]] = {key: [] for key in self.camera_keys}
        for index, row in enumerate(rows):
            grids = by_camera[self.camera_keys[index % len(self.camera_keys)]]
            if row not in grids:
                grids.append(row)
        return ", ".join(f"'{key}' {' and '.join(str(grid) for grid in grids)}" for key, grids in by_camera.items())


class ExportedBackbone(nn.Module):
    """Qwen3Backbone with the LLM layers (and optionally the ViT) run by runners.

    Kept in PyTorch, as in the reference: `embed_tokens`, the image-embedding scatter and the
    M-RoPE position ids (`get_rope_index`, which reads only the config).
    """

    def __init__(self, backbone: nn.Module, llm_runner: Runner, visual: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.image_token_id = backbone.image_token_id
        self.embed_tokens = backbone.language_model.embed_tokens
        self.visual = visual
        self.llm = ExportedModule(llm_runner, "llm", dtype)
        qwen_model = backbone.model.model
        self._rope_owner = SimpleNamespace(config=qwen_model.config)
        self._get_rope_index = type(qwen_model).get_rope_index

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Same contract as Qwen3Backbone.forward: pre-norm features plus the two masks."""
        input_ids = inputs["input_ids"]
        attention_mask = inputs["attention_mask"]
        pixel_values = inputs.get("pixel_values")
        grid_thw = inputs.get("image_grid_thw") if pixel_values is not None else None
        embeds = self.embed_tokens(input_ids)
        image_mask = input_ids == self.image_token_id
        deepstack: list[torch.Tensor] = []
        if pixel_values is not None:
            image_embeds, deepstack = self.visual(pixel_values, grid_thw=grid_thw)
            if int(image_mask.sum()) != image_embeds.shape[0]:
                raise ValueError(
                    f"{int(image_mask.sum())} image tokens in input_ids but {image_embeds.shape[0]} image embeddings"
                )
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds), image_embeds.to(embeds.dtype))
        position_ids, _ = self._get_rope_index(self._rope_owner, input_ids, grid_thw, None, attention_mask)
        feeds = {
            "inputs_embeds": embeds,
            "attention_mask": attention_mask.long(),
            "position_ids": position_ids.long(),
            "visual_pos_masks": image_mask,
        }
        expected = [n for n in self.llm.runner.input_names if n.startswith("deepstack_")]
        if pixel_values is None:  # no visual positions: one zero row per deepstack input is never added
            deepstack = [embeds.new_zeros(1, embeds.shape[-1]) for _ in expected]
        elif len(deepstack) != len(expected):
            raise ValueError(f"the exported LLM takes {len(expected)} deepstack inputs; the ViT gave {len(deepstack)}")
        for name, features in zip(expected, deepstack):
            feeds[name] = features
        features = self.llm.run(**feeds)["embeddings"]
        return {
            "backbone_features": features,
            "backbone_attention_mask": attention_mask == 1,
            "image_mask": image_mask,
        }


def swap_exported_modules(policy: Any, runners: dict[str, Runner], metadata: dict[str, Any]) -> list[str]:
    """Replace each sub-module that has a runner by its wrapper; returns the swapped names.

    The replaced PyTorch modules are dropped, so their memory is freed.
    """
    model = model_of(policy)
    dtype = model.dtype
    head = model.action_head
    swapped = []
    if "llm" in runners:
        visual: nn.Module = model.backbone.visual
        if "vit" in runners:
            configs = getattr(policy, "modality_configs", None)  # a Gr00tPolicy's: its cameras, named in errors
            cameras = configs["video"].modality_keys if isinstance(configs, dict) and "video" in configs else ()
            visual = ExportedVision(runners["vit"], dtype, metadata.get("image_grid_thw") or [], cameras)
            if metadata.get("sample_image_size"):  # warm-up and verify then sample frames this ViT takes
                policy.sample_image_size = tuple(metadata["sample_image_size"])
            if visual.grid_thw:  # a Gr00tPolicy refuses frames of another grid before the model runs, naming the camera
                policy.exported_image_grid = visual.grid_thw
        model.backbone = ExportedBackbone(model.backbone, runners["llm"], visual, dtype)
        swapped += ["vit", "llm"] if "vit" in runners else ["llm"]
    elif "vit" in runners:
        raise BackendError("an exported ViT is only used together with the exported LLM (full_pipeline)")
    if "vl_self_attention" in runners:
        head.vl_self_attention = ExportedVLSelfAttention(runners["vl_self_attention"], "vl_self_attention", dtype)
        swapped.append("vl_self_attention")
    if "state_encoder" in runners:
        head.state_encoder = ExportedCategoryMLP(runners["state_encoder"], "state_encoder", dtype, "state")
        swapped.append("state_encoder")
    if "action_encoder" in runners:
        head.action_encoder = ExportedActionEncoder(runners["action_encoder"], "action_encoder", dtype)
        swapped.append("action_encoder")
    if "dit" in runners:
        head.model = ExportedDiT(runners["dit"], dtype)
        swapped.append("dit")
    if "action_decoder" in runners:
        head.action_decoder = ExportedCategoryMLP(runners["action_decoder"], "action_decoder", dtype, "model_output")
        swapped.append("action_decoder")
    gc.collect()  # the replaced modules sit in reference cycles (forward hooks); free their memory now
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    logger.info("swapped %s into the model", swapped)
    return swapped
