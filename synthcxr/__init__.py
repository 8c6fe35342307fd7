"""SynthCXR: a phantom chest X-ray world with a known causal model (identity, pathology, acquisition)."""

from .renderer import VIEWS, render
from .world import (
    DEFAULT_PREVALENCE,
    FINDING_SPECS,
    Acquisition,
    Finding,
    FindingSpec,
    Patient,
    sample_acquisition,
    sample_findings,
    sample_patient,
    stable_seed,
)

__all__ = [
    "DEFAULT_PREVALENCE",
    "FINDING_SPECS",
    "VIEWS",
    "Acquisition",
    "Finding",
    "FindingSpec",
    "Patient",
    "render",
    "sample_acquisition",
    "sample_findings",
    "sample_patient",
    "stable_seed",
]

from .counterfactuals import CounterfactualEdit, counterfactual_edits, read_attributes  # noqa: E402
from .generate import DEGRADATIONS, SynthConfig, contact_sheet, degrade, generate_dataset, patient_for  # noqa: E402
from .reports import SynthReport, write_report  # noqa: E402

__all__ += [
    "CounterfactualEdit",
    "counterfactual_edits",
    "read_attributes",
    "DEGRADATIONS",
    "SynthConfig",
    "SynthReport",
    "contact_sheet",
    "degrade",
    "generate_dataset",
    "patient_for",
    "write_report",
]
