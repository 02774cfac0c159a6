"""The protein language model families that the embedding and compression tools load: one
table entry each (FAMILIES, keyed by transformers' `config.model_type`).

An entry says which transformers class loads the family (without a pooler), its release names
and hub ids, how its tokenizer frames a sequence (special tokens before and after the
residues), how a sequence is written for the tokenizer, and which Linear layers make its
encoder. ESM-2 is the family shipped; CONTRIBUTING.md shows how to add another.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from distil_rank.errors import InputError


@dataclass(frozen=True)
class ModelFamily:
    model_type: str  # transformers' config.model_type
    model_class: str  # the transformers class that loads it, called with add_pooling_layer=False
    releases: dict[str, str] = field(default_factory=dict)  # release name -> hub id
    hub_prefix: str | None = None  # hub ids of the family start with this
    encoder_prefix: str = "encoder."  # the Linear layers to compress: module names starting so
    leading_tokens: int = 1  # special tokens before the residues (<cls>)
    trailing_tokens: int = 1  # special tokens after them (<eos>)
    spaced: bool = False  # the tokenizer reads residues separated by spaces (ProtBert's)

    @property
    def special_tokens(self) -> int:
        return self.leading_tokens + self.trailing_tokens

    def text(self, sequence: str) -> str:
        """`sequence` as the tokenizer reads it."""
        return " ".join(sequence) if self.spaced else sequence

    def load(self, source: str, local: bool):
        """(tokenizer, model) from a hub id or a local folder. transformers' table of the
        checkpoint's keys is said in a line instead: the parts the encoder does not use (a
        masked-LM head, as the ESM-2 releases hold), and, as a warning, any encoder weight
        the checkpoint lacks (initialised at random)."""
        import transformers
        from transformers.utils import logging

        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
            model, found = getattr(transformers, self.model_class).from_pretrained(
                source, add_pooling_layer=False, local_files_only=local,
                output_loading_info=True)
        finally:
            logging.set_verbosity(verbosity)
        if unused := sorted({key.split(".")[0] for key in found["unexpected_keys"]}):
            print(f"note: {source}: {', '.join(unused)} not used (the tools read the encoder)",
                  file=sys.stderr)
        if lacking := [*found["missing_keys"], *(k for k, *_ in found["mismatched_keys"])]:
            print(f"warning: {source}: {len(lacking)} weight(s) of the model are not in the "
                  f"checkpoint, or not of its shape, and start at random ({lacking[0]} ...)",
                  file=sys.stderr)
        return tokenizer, model


# The ESM-2 release (Lin et al. 2023): esm2_t<layers>_<parameters>_UR50D.
ESM2 = ModelFamily(
    model_type="esm", model_class="EsmModel", hub_prefix="facebook/esm2_",
    releases={name: f"facebook/{name}" for name in (
        "esm2_t6_8M_UR50D", "esm2_t12_35M_UR50D", "esm2_t30_150M_UR50D",
        "esm2_t33_650M_UR50D", "esm2_t36_3B_UR50D", "esm2_t48_15B_UR50D")})

FAMILIES = {ESM2.model_type: ESM2}


def releases() -> dict[str, str]:
    """Every family's release names -> hub ids."""
    return {name: hub for family in FAMILIES.values() for name, hub in family.releases.items()}


def family_of(model_type: str, where: str) -> ModelFamily:
    """The family of a transformers `model_type`, or a one-line InputError naming `where`."""
    if model_type not in FAMILIES:
        raise InputError(f"{where}: a {model_type!r} model; the tools read "
                         f"{', '.join(repr(t) for t in FAMILIES)} models (distil_rank/families.py)")
    return FAMILIES[model_type]
