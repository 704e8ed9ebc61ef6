"""The TRL side of training: each method's trainer class and arguments, and the reference
adapter TRL computes reference log-probabilities with. Imports TRL: load it lazily."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from alignment.engine.generation import adapter_validate
from alignment.engine.lean_head import lean_head_add
from alignment.engine.scoring import INDEX_COLUMN, LENGTH_COLUMN, train_mode
from alignment.engine.training import TrainingConfig


class StoredRefDPOTrainer(DPOTrainer):
    """DPO on rows tokenized by alignment.engine.turns, that takes the reference
    log-probabilities the rows already carry (from a RefLogpStore; NaN where none was
    stored) and computes the missing ones only, in train mode; scores with the lean head
    (alignment.engine.lean_head); and keeps the policy's log-probabilities of each training
    pair as the last epoch computed them (`epoch_logps`), the contradictions' input."""

    def __init__(self, *args: Any, reference_config: TrainingConfig, **kwargs: Any) -> None:
        # Set before TRL's __init__, which precomputes the reference log-probabilities.
        self.reference_config = reference_config
        self.epoch_logps: dict[int, tuple[float, float]] = {}
        super().__init__(*args, **kwargs)
        self._lean_head()
        self.data_collator = _IndexedCollator(self.data_collator)

    def _lean_head(self) -> None:
        model: Any = self.model
        lean_head_add(model.get_base_model() if hasattr(model, "get_base_model") else model)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        if LENGTH_COLUMN not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [int(n) for n in dataset[LENGTH_COLUMN]]
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps
        if not length_grouping_pays(lengths, group, self.args.train_batch_size, self.args.seed):
            return super()._get_train_sampler(train_dataset)  # a plain shuffle mixes better
        return LengthGroupedSampler(lengths, group=group, seed=self.args.seed)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        kept = [
            c for c in (INDEX_COLUMN, LENGTH_COLUMN) if c not in (self._signature_columns or [])
        ]
        if self._signature_columns is not None and kept:
            self._signature_columns = [*self._signature_columns, *kept]

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        indices = inputs.pop(INDEX_COLUMN, None)
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        unwrapped: Any = self.accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        last = getattr(base, "last_logps", None)
        if indices is not None and last is not None and model.training:
            # Every epoch overwrites the one before: what is left is the last epoch's.
            chosen, rejected = last.float().chunk(2, dim=0)
            self.epoch_logps.update(
                zip(
                    indices.tolist(),
                    zip(chosen.tolist(), rejected.tolist(), strict=True),
                    strict=True,
                )
            )
        return result

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if "chosen_ids" in dataset.column_names:
            return dataset  # tokenized, and the pairs whose prompt fills max_length left out
        return super()._prepare_dataset(dataset, *args, **kwargs)

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        if "ref_chosen_logps" not in dataset.column_names:
            return self._ref_logps_compute(dataset, name, batch_size)
        missing = [i for i, v in enumerate(dataset["ref_chosen_logps"]) if math.isnan(v)]
        if not missing:
            return dataset
        computed = self._ref_logps_compute(
            dataset.select(missing).remove_columns(["ref_chosen_logps", "ref_rejected_logps"]),
            name,
            batch_size,
        )
        chosen, rejected = list(dataset["ref_chosen_logps"]), list(dataset["ref_rejected_logps"])
        for row, c, r in zip(
            missing, computed["ref_chosen_logps"], computed["ref_rejected_logps"], strict=True
        ):
            chosen[row], rejected[row] = c, r
        return (
            dataset.remove_columns(["ref_chosen_logps", "ref_rejected_logps"])
            .add_column("ref_chosen_logps", chosen)
            .add_column("ref_rejected_logps", rejected)
        )

    def _ref_logps_compute(self, dataset: Any, name: str, batch_size: int) -> Any:
        reference_prepare(self.model, self.reference_config)  # inside __init__: set it up now
        self._lean_head()  # TRL's __init__ put its own head on just before
        # In train mode, as the steps will run: from_pretrained leaves the model in eval
        # mode, where bitsandbytes' 4-bit CPU layers take another kernel with other
        # numbers, and the reference would not match the policy it starts from.
        with train_mode(self.model):
            return super()._precompute_ref_logps(dataset, name, batch_size)

    def policy_logps(self) -> dict[int, tuple[float, float]]:
        """The policy's summed log-probabilities of every training pair, by example index:
        as the last epoch computed them, and for the pairs it did not (a run resumed within
        its last epoch), one pass of the trained policy over the same tokens, computed as
        TRL computed the reference's: with `ref_model` set, `compute_ref_log_probs` leaves
        the adapters as they are."""
        dataset: Any = self.train_dataset
        model: Any = self.model
        missing = [
            row for row, i in enumerate(dataset[INDEX_COLUMN]) if int(i) not in self.epoch_logps
        ]
        if not missing:
            return dict(self.epoch_logps)
        dataset = dataset.select(missing)
        indices = [int(i) for i in dataset[INDEX_COLUMN]]
        loader = DataLoader(
            self._remove_unused_columns(dataset, description="scoring").remove_columns(
                [INDEX_COLUMN]
            ),
            batch_size=self.args.per_device_train_batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
        )
        saved, self.ref_model = self.ref_model, model
        found: list[tuple[float, float]] = []
        try:
            with train_mode(model), torch.no_grad():
                for batch in loader:
                    batch = self._prepare_inputs(batch)
                    chosen, rejected = self.compute_ref_log_probs(model, batch)
                    found.extend(zip(chosen.tolist(), rejected.tolist(), strict=True))
        finally:
            self.ref_model = saved
        return {**self.epoch_logps, **dict(zip(indices, found, strict=True))}


# Group by length only where it saves at least this share of the tokens a plain shuffle pads
# every pass to: where the pairs are of about one length, a plain shuffle mixes them better.
GROUPING_MIN_SAVING = 0.1


def padded_tokens(lengths: list[int], order: list[int], batch: int) -> int:
    """The tokens the passes of `batch` rows in `order` hold, each padded to its longest."""
    return sum(
        max(lengths[i] for i in order[start : start + batch]) * len(order[start : start + batch])
        for start in range(0, len(order), batch)
    )


def length_grouping_pays(lengths: list[int], group: int, batch: int, seed: int) -> bool:
    """Whether grouping by length pads `GROUPING_MIN_SAVING` fewer tokens than a shuffle."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    shuffled = padded_tokens(
        lengths, torch.randperm(len(lengths), generator=generator).tolist(), batch
    )
    grouped = padded_tokens(
        lengths, get_length_grouped_indices(lengths, group, generator=generator), batch
    )
    return grouped <= (1 - GROUPING_MIN_SAVING) * shuffled


class LengthGroupedSampler(Sampler[int]):
    """Each epoch a fresh shuffle whose batches hold pairs of like length (transformers'
    grouping: the longest first, then by length within groups of 50 optimizer steps), so a
    short pair is not padded to a long one. Seeded by the run's seed and the epoch, which
    accelerate sets (`set_epoch`): a resumed run sees the order it would have seen, and a run
    with stored reference log-probabilities the order of one without."""

    def __init__(self, lengths: list[int], *, group: int, seed: int) -> None:
        self.lengths, self.group, self.seed, self.epoch = lengths, group, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.group, generator=generator))


class _IndexedCollator:
    """TRL's preference collator, passing on each row's example index (INDEX_COLUMN) as a
    tensor where the rows carry one."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self.collate(examples)
        if examples and INDEX_COLUMN in examples[0]:
            batch[INDEX_COLUMN] = torch.tensor([int(e[INDEX_COLUMN]) for e in examples])
        return batch


class TokenizedKTOTrainer(KTOTrainer):
    """KTO on rows tokenized by alignment.engine.turns (prompt_ids, completion_ids, label),
    in the order given: each row's KL completion is its batch neighbour's, as TRL pairs them."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        if "completion_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, name)
        if not self.calculate_KL:
            return dataset

        def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            completions = batch["completion_ids"]
            batch["KL_completion_ids"] = [completions[-1], *completions[:-1]]
            return batch

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


def preference_features(feature: dict[str, Any], max_length: int) -> dict[str, Any]:
    """ORPO's and CPO's features of a row tokenized by alignment.engine.turns: prompt then
    completion, the completion cut to fit max_length, labels on the completion only. Their
    own tokenization would add an end-of-turn token after the template's."""
    prompt = list(feature["prompt_ids"])
    room = max(max_length - len(prompt), 0)
    out: dict[str, Any] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        ids = prompt + list(feature[f"{side}_ids"])[:room]
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [-100] * len(prompt) + ids[len(prompt) :]
    return out


class TokenizedORPOTrainer(ORPOTrainer):
    def tokenize_row(self, feature: Any, model: Any = None) -> dict[str, Any]:
        return preference_features(feature, self.max_length)


class TokenizedCPOTrainer(CPOTrainer):
    def tokenize_row(self, feature: Any, model: Any = None) -> dict[str, Any]:
        return preference_features(feature, self.max_length)


def method_trainer(config: TrainingConfig, common: dict[str, Any]) -> tuple[Any, Any]:
    """The TRL trainer class of the method (a callable taking the Trainer's arguments) and its
    arguments. Each takes rows tokenized by alignment.engine.turns."""
    if config.method == "kto":
        return TokenizedKTOTrainer, KTOConfig(
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            **common,
        )
    if config.method == "orpo":
        return TokenizedORPOTrainer, ORPOConfig(**common)
    if config.method == "simpo":
        # SimPO is CPO's "simpo" loss without its behaviour-cloning term (cpo_alpha 0).
        return TokenizedCPOTrainer, CPOConfig(
            loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.simpo_gamma, **common
        )
    losses, weights = [config.loss_type], [1.0]
    if config.sft_weight > 0:
        losses.append("sft")
        weights.append(config.sft_weight)
    return functools.partial(StoredRefDPOTrainer, reference_config=config), DPOConfig(
        loss_type=losses,
        loss_weights=weights if len(losses) > 1 else None,
        label_smoothing=config.label_smoothing,
        **common,
    )


def reference_prepare(model: Any, config: TrainingConfig) -> None:
    """Make the PEFT model's "ref" adapter the reference asked for. TRL computes reference
    log-probabilities with the "ref" adapter when there is one (a copy of the adapter
    training continues from), else with every adapter disabled (the base). Idempotent."""
    if config.reference == "start" or not hasattr(model, "peft_config"):
        return
    if config.reference == "base":
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        return
    if getattr(model, "prefloop_reference", None) == config.reference:
        return
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    adapter_validate(config.reference, sha256=config.reference_sha256)  # just before loading
    model.load_adapter(config.reference, adapter_name="ref", is_trainable=False)
    model.prefloop_reference = config.reference
