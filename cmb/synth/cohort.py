"""``cmb synth``: generate a BIDS cohort of synthetic SWI / T2*-GRE scans with ground truth."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cmb.synth.anatomy import TissueContrast, build_head_model, parameter_maps, t1w_map
from cmb.synth.bids_writer import (
    TRUTH_PIPELINE,
    ScanEntities,
    write_dataset_files,
    write_parcellation,
    write_scan,
    write_t1w,
)
from cmb.synth.geometry import random_pose, random_warp
from cmb.synth.lesions import (
    CMB_SIZE_MODELS,
    COUNT_PROFILES,
    draw_cmb_count,
    parse_location_prior,
    place_calcifications,
    place_cmbs,
    place_veins,
    to_subject_space,
)
from cmb.synth.presets import LAYOUTS, PRESET_NAMES, draw_acquisition
from cmb.synth.preview import write_preview
from cmb.synth.random_veins import TOUCH_SHARE, place_random_veins, place_touching_cmbs
from cmb.synth.scan import simulate_scan, simulate_t1w, t1w_parcellation
from cmb.synth.truth import write_truth

__all__ = ["SynthOptions", "SynthError", "VEIN_MODELS", "synthesize", "validate_options"]

# anatomical: medullary and pial veins only; randomized: a quarter of those, the rest
# domain-randomized (cmb.synth.random_veins), and a share of CMBs placed against veins.
VEIN_MODELS = ("anatomical", "randomized")
_ANATOMICAL_SHARE = 0.25  # of the veins of a randomized subject


class SynthError(ValueError):
    """Invalid ``cmb synth`` request; the message is one line meant for the user."""


@dataclass(frozen=True)
class SynthOptions:
    out: Path
    n_subjects: int
    seed: int = 0
    preset: str = "tiny"
    layout: str | None = None
    location_prior: str = "mixed"
    count_profile: str = "population"
    n_cmb: int | None = None  # fixed count per subject (overrides the profile)
    with_t1w: bool = False
    parcellation: bool = (
        False  # with the T1w: its true aparc+aseg labels in derivatives/synth-parcellation
    )
    sessions: int = 0  # 0: no session entity; mixed draws per subject when left at 0
    phase_filter: str = "raw"  # "raw" wrapped phase or "hp" SWI-style high-passed phase
    phase_units: str = "auto"  # auto (by vendor), rad, deg, int12
    paramagnetic_phase: str = "auto"  # auto (by vendor), positive, negative
    slice_mm: float | None = None
    n_echoes: int | None = None
    snr: float | None = None
    te_ms: tuple[float, ...] | None = None
    field_strength: float | None = None
    n_veins: int | None = None
    vein_model: str = "anatomical"
    cmb_sizes: str | None = (
        None  # a CMB_SIZE_MODELS key; None: "wide" with the randomized preset, else "typical"
    )
    overwrite: bool = False
    preview: bool = False


def validate_options(o: SynthOptions) -> None:
    """Raise :class:`SynthError` for a request that cannot be honoured; writes nothing."""
    if o.n_subjects <= 0:
        raise SynthError(f"--n-subjects must be a positive integer, got {o.n_subjects}")
    if o.parcellation and not o.with_t1w:
        raise SynthError("--parcellation labels the T1w: add --t1w")
    if o.preset not in PRESET_NAMES:
        raise SynthError(f"unknown preset {o.preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    if o.layout is not None and o.layout not in LAYOUTS:
        raise SynthError(f"unknown layout {o.layout!r}; choose one of {', '.join(LAYOUTS)}")
    try:
        parse_location_prior(o.location_prior)
    except ValueError as e:
        raise SynthError(str(e)) from None
    if o.count_profile not in COUNT_PROFILES:
        raise SynthError(
            f"unknown count profile {o.count_profile!r}; choose one of {', '.join(COUNT_PROFILES)}"
        )
    if o.n_cmb is not None and not 0 <= o.n_cmb <= 100:
        raise SynthError(f"--n-cmb must be between 0 and 100, got {o.n_cmb}")
    if o.snr is not None and not o.snr > 0:
        raise SynthError(f"impossible physics: --snr must be > 0, got {o.snr}")
    if o.field_strength is not None and not 0.1 <= o.field_strength <= 11.7:
        raise SynthError(
            f"impossible physics: --field-strength must be within 0.1-11.7 T, got {o.field_strength}"
        )
    if o.te_ms is not None:
        if not o.te_ms or any(not 0 < te <= 200 for te in o.te_ms):
            raise SynthError(
                f"impossible physics: echo times must be within (0, 200] ms, got {list(o.te_ms)}"
            )
        if list(o.te_ms) != sorted(set(o.te_ms)):
            raise SynthError(f"impossible physics: echo times must increase, got {list(o.te_ms)}")
    if o.slice_mm is not None and not 0.3 <= o.slice_mm <= 10:
        raise SynthError(
            f"impossible physics: --slice-thickness must be within 0.3-10 mm, got {o.slice_mm}"
        )
    if o.n_echoes is not None and not 1 <= o.n_echoes <= 8:
        raise SynthError(f"--n-echoes must be within 1-8, got {o.n_echoes}")
    if o.phase_filter not in ("raw", "hp"):
        raise SynthError(f"--phase must be 'raw' or 'hp', got {o.phase_filter!r}")
    if o.phase_units not in ("auto", "rad", "deg", "int12"):
        raise SynthError(f"--phase-units must be auto, rad, deg or int12, got {o.phase_units!r}")
    if o.paramagnetic_phase not in ("auto", "positive", "negative"):
        raise SynthError(
            f"--paramagnetic-phase must be auto, positive or negative, got {o.paramagnetic_phase!r}"
        )
    if o.vein_model not in VEIN_MODELS:
        raise SynthError(
            f"--vein-model must be one of {', '.join(VEIN_MODELS)}, got {o.vein_model!r}"
        )
    if o.cmb_sizes is not None and o.cmb_sizes not in CMB_SIZE_MODELS:
        raise SynthError(
            f"--cmb-sizes must be one of {', '.join(CMB_SIZE_MODELS)}, got {o.cmb_sizes!r}"
        )
    if o.n_veins is not None and not 0 <= o.n_veins <= 200:
        raise SynthError(f"--n-veins must be between 0 and 200, got {o.n_veins}")
    if o.sessions < 0 or o.sessions > 20:
        raise SynthError(f"--sessions must be within 0-20, got {o.sessions}")
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not o.overwrite:
        raise SynthError(f"--out {out} is not empty; pass --overwrite to write into it")


_VENDOR_PHASE_UNITS = {"Siemens": "int12", "GE": "rad", "Philips": "deg"}


def _subject_plan(o: SynthOptions, rng: np.random.Generator) -> list[tuple[str | None, int | None]]:
    """(session, run) of each scan of one subject."""
    if o.sessions:
        sessions = [f"{s:02d}" for s in range(1, o.sessions + 1)]
    elif o.preset == "mixed" and rng.random() < 0.25:
        sessions = ["01", "02"]
    else:
        sessions = [None]
    plan = []
    for ses in sessions:
        runs = [1, 2] if o.preset == "mixed" and rng.random() < 0.1 else [None]
        plan.extend((ses, run) for run in runs)
    return plan


def synthesize(o: SynthOptions, log=print) -> pd.DataFrame:
    """Generate the cohort described by ``o``; returns the participants table."""
    validate_options(o)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(o.n_subjects)))
    participants = []
    command = "cmb synth " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else "cmb synth (API)"
    for n in range(1, o.n_subjects + 1):
        t0 = time.perf_counter()
        sub = f"{n:0{width}d}"
        rng = np.random.default_rng([o.seed, n])
        row = synthesize_subject(o, sub, rng, out)
        participants.append(row)
        log(
            f"sub-{sub}: {row['n_scans']} scan(s), {row['n_cmb']} CMB(s), {row['preset']} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    df = pd.DataFrame(participants)
    write_dataset_files(
        out, df[["participant_id", "age", "sex", "site", "cohort_profile"]], command, o.seed
    )
    if o.preview:
        path = write_preview(out)
        log(f"preview: {path}")
    return df


def synthesize_subject(o: SynthOptions, sub: str, rng: np.random.Generator, out: Path) -> dict:
    acq, site = draw_acquisition(
        o.preset, rng, layout=o.layout, slice_mm=o.slice_mm, n_echoes=o.n_echoes
    )
    if o.snr is not None:
        acq = replace(acq, snr=o.snr)
    if o.te_ms is not None:
        acq = replace(acq, tes=tuple(t / 1000.0 for t in o.te_ms))
    if o.field_strength is not None:
        acq = replace(acq, b0=o.field_strength)
        site = replace(site, b0=o.field_strength)
    model = build_head_model(acq.model_step)
    warp = random_warp(rng)
    contrast = TissueContrast().jittered(rng, scale=acq.contrast_jitter)
    maps = parameter_maps(model, contrast, acq.b0)
    n_cmb = o.n_cmb if o.n_cmb is not None else draw_cmb_count(rng, o.count_profile)
    te_ref = min(acq.tes, key=lambda te: abs(te - 0.02))
    prior = parse_location_prior(o.location_prior)
    sizes = cmb_size_model(o)
    if o.vein_model == "randomized":
        # The poses come first: the veins are aimed in the first scan's scanner space.
        scans = _subject_plan(o, rng)
        poses = [random_pose(rng) for _ in scans]
        lesions = _randomized_lesions(
            o, model, warp, poses[0], n_cmb, prior, acq.b0, te_ref, rng, sizes
        )
    else:
        scans, poses = None, None
        lesions = place_cmbs(model, warp, n_cmb, rng, prior, b0=acq.b0, te=te_ref, size_model=sizes)
        n_veins = o.n_veins if o.n_veins is not None else int(rng.integers(14, 26))
        lesions += place_veins(
            model, warp, rng, n_medullary=n_veins // 2, n_pial=n_veins - n_veins // 2
        )
    lesions += place_calcifications(model, warp, rng)
    to_subject_space(lesions, warp)
    para = site.paramagnetic_phase if o.paramagnetic_phase == "auto" else o.paramagnetic_phase
    units = _VENDOR_PHASE_UNITS[site.manufacturer] if o.phase_units == "auto" else o.phase_units
    t1 = t1w_map(model) if o.with_t1w else None
    if scans is None:
        scans = _subject_plan(o, rng)
    for n_scan, (ses, run) in enumerate(scans):
        ent = ScanEntities(sub, ses, run)
        pose = poses[n_scan] if poses else random_pose(rng)
        storage = "LPS" if rng.random() < 0.5 else "RAS"
        result = simulate_scan(
            model, maps, warp, pose, acq, lesions, rng, paramagnetic_phase=para, storage=storage
        )
        written = write_scan(
            out,
            ent,
            acq,
            site,
            result,
            phase_units=units,
            phase_filter=o.phase_filter,
            paramagnetic_phase=para,
        )
        datatype = next(iter(written.values())).parent.name
        params = {
            "seed": o.seed,
            "participant_id": f"sub-{sub}",
            "session": ses,
            "run": run,
            "preset": acq.name,
            "layout": acq.layout,
            "voxel_mm": acq.voxel_mm,
            "matrix": acq.matrix,
            "field_strength": acq.b0,
            "echo_times": acq.tes,
            "snr": acq.snr,
            "manufacturer": site.manufacturer,
            "paramagnetic_phase": para,
            "phase_units": units,
            "phase_filter": o.phase_filter,
            "storage_orientation": storage,
            "pose": pose,
            "contrast": contrast.__dict__,
            "location_prior": o.location_prior,
            "reference_echo": result.reference_echo,
            "images": {k: str(v.relative_to(out)) for k, v in written.items()},
        }
        if o.preset == "randomized" or o.vein_model != "anatomical" or sizes != "typical":
            params.update(
                {
                    "cmb_sizes": sizes,
                    "vein_model": o.vein_model,
                    "site": site.name,
                    "model": site.model,
                    "repetition_time": acq.tr,
                    "flip_angle": acq.flip_deg,
                    "fov_mm": acq.fov_mm,
                    "bias_field_scale": acq.bias_scale,
                    "contrast_jitter_scale": acq.contrast_jitter,
                }
            )
        write_truth(
            ent.folder(out / "derivatives" / TRUTH_PIPELINE, datatype),
            ent.prefix,
            lesions,
            result,
            pose,
            warp,
            params,
        )
        if t1 is not None:
            data, aff = simulate_t1w(model, t1, warp, pose, rng)
            write_t1w(out, ent, site, data, aff)
            if o.parcellation:
                write_parcellation(
                    out,
                    ent,
                    t1w_parcellation(model, warp, pose, aff, data.shape),
                    aff,
                    model.dk_names,
                )
    return {
        "participant_id": f"sub-{sub}",
        "age": int(rng.integers(55, 90)),
        "sex": "F" if rng.random() < 0.5 else "M",
        "site": site.name,
        "cohort_profile": o.location_prior,
        "preset": acq.name,
        "n_scans": len(scans),
        "n_cmb": sum(les.source.kind == "cmb" for les in lesions),
    }


def cmb_size_model(o: SynthOptions) -> str:
    """The CMB size model of a request: ``cmb_sizes``, else ``wide`` for the randomized preset."""
    return o.cmb_sizes or ("wide" if o.preset == "randomized" else "typical")


def _randomized_lesions(
    o: SynthOptions,
    model,
    warp,
    pose,
    n_cmb: int,
    prior,
    b0: float,
    te: float,
    rng: np.random.Generator,
    sizes: str = "typical",
) -> list:
    """Veins (a quarter anatomical, the rest randomized), then CMBs: a share against a vein, the rest clear of them."""
    n_veins = o.n_veins if o.n_veins is not None else int(rng.integers(25, 61))
    n_anatomical = int(round(_ANATOMICAL_SHARE * n_veins))
    veins = place_veins(
        model, warp, rng, n_medullary=n_anatomical // 2, n_pial=n_anatomical - n_anatomical // 2
    )
    veins += place_random_veins(model, warp, pose, rng, n_veins - n_anatomical, first_id=len(veins))
    touching = place_touching_cmbs(
        model,
        warp,
        pose,
        veins,
        int(rng.binomial(n_cmb, TOUCH_SHARE)),
        rng,
        prior,
        b0=b0,
        te=te,
        size_model=sizes,
    )
    cmbs = touching + place_cmbs(
        model,
        warp,
        n_cmb - len(touching),
        rng,
        prior,
        b0=b0,
        te=te,
        avoid_veins=veins,
        existing=touching,
        size_model=sizes,
    )
    return cmbs + veins
