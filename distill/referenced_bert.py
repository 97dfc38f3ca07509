"""Reference students (RefBERT, Wang et al. 2021): each input brings the teacher's pre-computed
representation of a similar *other* example (:mod:`~distilnas.distill.retrieval` finds it,
:mod:`~distilnas.distill.reference_store` holds its states), which the student's first layer attends to.

:class:`ReferencedBertModel` / :class:`ReferencedBertForSequenceClassification` (``model_type``
``referenced-bert``, registered with the Auto classes): a BERT whose first self-attention also attends
to the reference. The reference states are projected to the student's width (``reference_projection``,
the only new weights) and go through that layer's own key and value maps, so they become extra keys and
values; the queries are the input's alone, and every later layer is a plain BERT layer. Inputs name the
reference by its pool row (``reference_ids``, looked up in the attached store) or give its states
directly (``reference_states``, ``reference_mask``); without either the model is a plain BERT. The store
is saved with the student (``references/`` beside the weights) and attached again when it is loaded.

Departures from the paper: retrieval is TF-IDF (not the teacher's own embedding), and the reference enters
the first layer only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

from distilnas.distill.errors import UserError
from distilnas.distill.reference_store import ReferenceStore, StoreKey
from distilnas.distill.utils import register_student

MODEL_TYPE = "referenced-bert"


@dataclass
class References:
    """What the first layer attends to besides its input: states in the student's width and their mask."""

    states: torch.Tensor
    """(batch, tokens, hidden)."""
    mask: torch.Tensor
    """(batch, tokens), True where a token is real."""


def extended_mask(
    mask: torch.Tensor | None, refs: torch.Tensor, queries: int, keys: int, dtype: torch.dtype
) -> torch.Tensor:
    """The layer's attention mask with the reference tokens appended as keys.

    ``mask`` is what the model built for the input alone: None (attend everywhere), a boolean mask (SDPA)
    or an additive float mask (eager), shaped (batch, 1, queries, keys).
    """
    b = refs.shape[0]
    if mask is None:
        mask = torch.ones((b, 1, queries, keys), dtype=torch.bool, device=refs.device)
    extra = refs[:, None, None, :].expand(b, 1, mask.shape[2], refs.shape[1])
    if mask.dtype == torch.bool:
        return torch.cat([mask.expand(b, 1, -1, -1), extra], dim=-1)
    additive = torch.zeros(extra.shape, dtype=mask.dtype, device=mask.device)
    additive = additive.masked_fill(~extra, torch.finfo(mask.dtype).min)
    return torch.cat([mask.expand(b, 1, -1, -1), additive], dim=-1)


class ReferencedSelfAttention(BertSelfAttention):
    """BERT self-attention whose keys and values also cover the reference states (queries do not).

    The reference keys come after the input's, so a recorder that keeps the first ``queries`` keys sees
    exactly the input's keys and values (the distillation losses compare those)."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        references: References | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        if references is None:
            return super().forward(hidden_states, attention_mask, past_key_values, **kwargs)
        b, t = hidden_states.shape[:2]
        d = self.attention_head_size
        both = torch.cat([hidden_states, references.states.to(hidden_states.dtype)], dim=1)
        query = self.query(hidden_states).view(b, t, -1, d).transpose(1, 2)
        key = self.key(both).view(b, both.shape[1], -1, d).transpose(1, 2)
        value = self.value(both).view(b, both.shape[1], -1, d).transpose(1, 2)
        mask = extended_mask(attention_mask, references.mask.bool(), t, t, hidden_states.dtype)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attend(
            self,
            query,
            key,
            value,
            mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        return out.reshape(b, t, -1).contiguous(), weights


class ReferencedBertConfig(BertConfig):
    """A BERT config plus where its references come from."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        reference_hidden_size: int = 768,
        reference_layer: int = -1,
        reference_tokens: int = 32,
        reference_store: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reference_hidden_size = reference_hidden_size
        """The teacher's width: what ``reference_projection`` maps from."""
        self.reference_layer = reference_layer
        """The teacher layer the stored states are from (for the record; the store says it too)."""
        self.reference_tokens = reference_tokens
        self.reference_store = reference_store
        """The key of the store the student was trained with (teacher, pool, layer, tokens)."""


class ReferencedStoreMixin:
    """Attaching a store, and saving and loading it in ``references/`` beside the weights."""

    def referenced_encoder(self) -> ReferencedBertModel:
        return self.bert  # type: ignore[attr-defined]

    @property
    def reference_store(self) -> ReferenceStore | None:
        return self.referenced_encoder().store

    def attach(self, store: ReferenceStore | None) -> Any:
        """Use ``store`` for ``reference_ids``. The first store a student gets is recorded in its config
        (``reference_store``); a store of another teacher, dataset, layer or length is refused after."""
        enc = self.referenced_encoder()
        if store is not None:
            if store.hidden_size != enc.config.reference_hidden_size:
                raise UserError(
                    f"{store.folder}: the reference store holds width {store.hidden_size}, the student's "
                    f"reference_projection reads {enc.config.reference_hidden_size}"
                )
            known = enc.config.reference_store
            if known:
                store.check(StoreKey(**known))
            enc.config.reference_store = dict(store.key.__dict__)  # the classifier shares this config
        enc.store = store
        return self

    def measurement_inputs(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A full-length reference for each input: what a timing must include."""
        cfg = self.referenced_encoder().config
        shape = (batch_size, int(cfg.reference_tokens), int(cfg.reference_hidden_size))
        return {"reference_states": torch.randn(shape, generator=generator)}

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        out = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        if self.reference_store is not None:
            self.reference_store.copy_to(Path(save_directory) / "references")
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        folder = Path(str(pretrained_model_name_or_path)) / "references"
        if (folder / "store.json").is_file():
            model.attach(ReferenceStore(folder))
        return model


class ReferencedBertModel(ReferencedStoreMixin, BertModel):
    """A BERT encoder whose first layer attends to a reference (see the module docstring)."""

    config_class = ReferencedBertConfig

    def __init__(self, config: ReferencedBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer)
        first: Any = self.encoder.layer[0]
        first.attention.self.__class__ = ReferencedSelfAttention  # the same weights, more keys
        self.reference_projection = nn.Linear(config.reference_hidden_size, config.hidden_size)
        self._init_weights(self.reference_projection)
        self.store: ReferenceStore | None = None

    def referenced_encoder(self) -> ReferencedBertModel:
        return self

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        reference_ids: torch.Tensor | None = None,
        reference_states: torch.Tensor | None = None,
        reference_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        device = self.reference_projection.weight.device
        if reference_ids is not None:
            if reference_states is not None:
                raise ValueError("give reference_ids or reference_states, not both")
            if self.store is None:
                raise UserError("reference_ids need a reference store: attach one (model.attach(store))")
            reference_states, reference_mask = self.store.states(reference_ids, device)
        if reference_states is not None:
            if reference_mask is None:
                reference_mask = torch.ones(reference_states.shape[:2], dtype=torch.bool, device=device)
            states = self.reference_projection(
                reference_states.to(device, self.reference_projection.weight.dtype)
            )
            kwargs["references"] = References(states, reference_mask.to(device).bool())
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


class ReferencedBertForSequenceClassification(ReferencedStoreMixin, BertForSequenceClassification):
    """A referenced BERT with BERT's classification head."""

    config_class = ReferencedBertConfig

    def __init__(self, config: ReferencedBertConfig) -> None:
        super().__init__(config)
        self.bert = ReferencedBertModel(config)


def referenced(
    model: BertModel | BertForSequenceClassification, reference_hidden_size: int, layer: int, tokens: int
) -> ReferencedBertModel | ReferencedBertForSequenceClassification:
    """The converter: ``model`` (a BERT encoder or classifier) as a referenced BERT, every weight copied;
    the reference projection starts from BERT's initialisation."""
    dense = {k: v for k, v in model.config.to_dict().items() if k != "model_type"}
    cfg = ReferencedBertConfig(
        reference_hidden_size=reference_hidden_size, reference_layer=layer, reference_tokens=tokens, **dense
    )
    torch.manual_seed(0)
    out: ReferencedBertModel | ReferencedBertForSequenceClassification
    if isinstance(model, BertModel):
        out = ReferencedBertModel(cfg, add_pooling_layer=model.pooler is not None)
    else:
        out = ReferencedBertForSequenceClassification(cfg)
    missing = out.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert all("reference_projection" in k for k in missing), missing
    return out


register_student(
    MODEL_TYPE, ReferencedBertConfig, ReferencedBertModel, ReferencedBertForSequenceClassification
)
