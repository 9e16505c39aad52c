"""The ``variability`` view: its SQL equals the Python definition; its default thresholds separate
the simulator's variables from constant sources over a synthetic night of small groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from catalog import query, store, views
from contimg import instrument
from contimg.config import Settings
from contimg.variability import VariabilityThresholds, is_candidate, metrics

DATE = "2026-11-25"
T0 = 61369.5  # MJD of the first epoch: 2026-11-25T12:00
CADENCE_D = 78.0 / 86400.0


def row(name: str, k: int, peak: float, rms: float, *, kind: str = "group", flags=(), pb: float = 0.8,
        image: str | None = None, ra: float = 128.0, dec: float = 54.0) -> dict:
    """One photometry row of source ``name`` in the ``k``-th group image of the night."""
    mjd = T0 + k * CADENCE_D
    return {"source_name": name, "ra_deg": ra, "dec_deg": dec,
            "image_path": image or f"/products/images/g{k:02d}/g{k:02d}-image-pb.fits",
            "image_kind": kind, "group_id": f"g{k:02d}" if kind == "group" else None,
            "mosaic_id": "m00" if kind == "mosaic" else None, "mid_mjd": mjd, "peak_jy": peak, "rms_jy": rms,
            "snr": peak / rms if rms else None, "pb_response": pb, "flux_scale": 1.0, "flags": list(flags),
            "reference": "test", "obs_date": DATE}


def view_rows(cat, sql: str = "SELECT * FROM variability ORDER BY source_name", params=None) -> dict:
    return {r["source_name"]: r for r in query.query(cat, sql, params).to_pylist()}


@pytest.fixture(scope="module")
def night_catalog(tmp_path_factory):
    """200 constant sources with Gaussian noise, a flare, and the rows the view must ignore."""
    cat = tmp_path_factory.mktemp("var") / "catalog"
    rng = np.random.default_rng(1)
    rows, good = [], {}
    for i in range(200):
        name = f"C{i:03d}"
        s, rms = rng.uniform(0.02, 0.5), rng.uniform(0.005, 0.01)
        for k in range(24):
            e = rms * rng.uniform(0.8, 1.5)  # rms varies with the beam response
            rows.append(row(name, k, s + rng.normal(0, e), e))
            good.setdefault(name, []).append(rows[-1])
    flare = 0.2 * (1 + 2 * np.exp(-np.clip(np.arange(24) - 8, 0, None) / 3.0) * (np.arange(24) >= 8))
    for k in range(24):
        rows.append(row("FLARE", k, flare[k] + rng.normal(0, 0.006), 0.006))
        good.setdefault("FLARE", []).append(rows[-1])
    # ignored by the view: flagged rows, mosaic rows, a zero rms; one superseded by a later row
    rows.append(row("FLARE", 30, 50.0, 0.006, flags=["near_bright"]))
    rows.append(row("FLARE", 31, 50.0, 0.006, kind="mosaic", image="/products/mosaics/m00.fits"))
    rows.append(row("C000", 32, 50.0, 0.0))
    rows.append(row("ONE", 0, 0.1, 0.01))
    good["ONE"] = [rows[-1]]
    store.append(cat, "photometry", rows)
    # a re-measurement of FLARE's epoch 3 replaces the first (latest row per image and source)
    again = row("FLARE", 3, 0.25, 0.007)
    store.append(cat, "photometry", [again])
    good["FLARE"][3] = again
    return cat, good


def test_view_equals_the_python_definition(night_catalog):
    cat, good = night_catalog
    got = view_rows(cat)
    assert set(got) == set(good)
    defaults = VariabilityThresholds(**views.VARIABILITY_DEFAULTS)
    for name, rows in good.items():
        want = metrics([r["peak_jy"] for r in rows], [r["rms_jy"] for r in rows],
                       snr=[r["snr"] for r in rows], mjd=[r["mid_mjd"] for r in rows])
        for key, value in want.items():
            if value is None:
                assert got[name][key] is None, (name, key)
            else:
                assert got[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        assert got[name]["is_candidate"] is is_candidate(want, defaults), name
    assert got["FLARE"]["n_epochs"] == 24 and got["ONE"]["n_epochs"] == 1


def test_eta_of_constant_sources_is_one_and_a_flare_stands_out(night_catalog):
    cat, _ = night_catalog
    got = view_rows(cat)
    eta = np.array([r["eta"] for n, r in got.items() if n.startswith("C")])
    v = np.array([r["v"] for n, r in got.items() if n.startswith("C")])
    # eta of a constant source with right errors is chi2(23) / 23: mean 1, sd 0.29 per source
    assert np.mean(eta) == pytest.approx(1.0, abs=0.06)
    assert 0.7 < np.median(eta) < 1.3
    flare = got["FLARE"]
    assert flare["eta"] > 50 * eta.max() and flare["v"] > 0.3 and flare["is_candidate"]
    assert np.median(v) < 0.1  # constants: V ~ rms / flux
    assert not any(r["is_candidate"] for n, r in got.items() if n != "FLARE")
    assert flare["max_dev_sigma"] > 50


def test_thresholds_as_macro_arguments(night_catalog):
    cat, _ = night_catalog
    strict = view_rows(cat, "SELECT * FROM variability_at(eta_min := 1e9) ORDER BY source_name")
    assert not any(r["is_candidate"] for r in strict.values())
    loose = view_rows(cat, "SELECT * FROM variability_at(eta_min := 0.0, v_min := 0.0, min_epochs := 2, "
                           "min_snr := 0.0)")
    assert sum(r["is_candidate"] for r in loose.values()) == 201  # all but ONE (one epoch: no eta)


def test_settings_defaults_are_the_view_defaults():
    s = Settings()
    assert VariabilityThresholds.from_settings(s).to_dict() == views.VARIABILITY_DEFAULTS


def test_empty_catalog_has_an_empty_typed_view(tmp_path):
    table = query.query(tmp_path / "none", "SELECT * FROM variability")
    assert table.num_rows == 0 and "is_candidate" in table.column_names and "eta" in table.column_names


# --- the default thresholds over a synthetic night of small groups --------------------------------

def synthetic_night(*, n_groups: int = 24, seed: int = 0, systematic: float = 0.03,
                    image_sigma_jy: float = 0.0059, low_pb: float = 0.2) -> tuple[dict, dict]:
    """Forced photometry of a simulated night, made from the simulator's sky without imaging it.

    The demo's night (``contimg demo``: Dec 54.5734, J0834+5534 transiting the middle group)
    of ``n_groups`` small groups, 78 s apart: every field source of the simulator's population
    (seed ``seed``) that any group sees above 5 sigma, plus the variables of
    :func:`contimg.simulate.variables.night_variables`. Per group, each source's apparent flux is
    ``S(t) PB(offset(t))`` (Airy beam at 1.4 GHz, offset from the meridian at the group's mid
    time); the measured primary-beam-corrected peak is ``S(t) (1 + systematic N(0,1)) +
    (image_sigma / PB) N(0,1)`` with ``rms_jy = image_sigma / PB`` (the thermal noise only,
    as photometry reports it); epochs with ``PB < low_pb`` are flagged ``low_pb``.
    ``image_sigma_jy`` is the small group's natural-weighting thermal noise in the simulator's
    truth (5.9 mJy/beam); ``systematic`` stands for flux-scale, calibration and beam-model errors
    that ``rms_jy`` does not carry.

    Returns
    -------
    (dict, dict)
        Source name -> list of (mjd, peak_jy, rms_jy, flags); source name -> truth kind
        (``field`` or the variable's curve kind).
    """
    from astropy.time import Time

    from contimg.simulate import sky as sky_mod
    from contimg.simulate.variables import night_variables
    from contimg.sky.beam import airy_power

    dec0 = 54.5734
    cal_ra = 128.72876715416666
    rng = np.random.default_rng([seed, 20])
    mid = Time(f"{DATE}T12:11:40", scale="utc")  # about J0834+5534's transit
    t_mid = mid.mjd + (np.arange(n_groups) - n_groups / 2 + 0.5) * CADENCE_D
    lst = Time(t_mid, format="mjd").sidereal_time("apparent", longitude=instrument.SITE.lon).deg
    start, end = t_mid[0] - CADENCE_D / 2, t_mid[-1] + CADENCE_D / 2
    variables = night_variables(start, end, ra_deg=float(lst[n_groups // 2]), dec_deg=dec0)
    field = sky_mod.field_population(lst[0] - 1.0, lst[-1] + 1.0, dec0, seed=seed)
    names = [s.name for s in field] + [v.name for v in variables.sources]
    ra = np.radians([s.ra_deg for s in field] + [v.ra_deg for v in variables.sources])
    dec = np.radians([s.dec_deg for s in field] + [v.dec_deg for v in variables.sources])
    flux0 = np.array([s.flux_jy for s in field] + [v.flux_jy for v in variables.sources])
    factor = np.ones((n_groups, len(names)))
    factor[:, len(field):] = np.stack([v.factor(t_mid) for v in variables.sources], axis=1)
    kinds = {**{s.name: "field" for s in field}, **{v.name: v.curve.kind for v in variables.sources}}
    ha = np.radians(lst)[:, None] - ra[None, :]
    d0 = math.radians(dec0)
    cos_off = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ha)
    pb = airy_power(np.arccos(np.clip(cos_off, -1, 1)), 1.4e9)
    seen = (flux0 * factor * pb).max(axis=0) >= 5 * image_sigma_jy
    out = {}
    for j in np.flatnonzero(seen):
        rms = image_sigma_jy / np.maximum(pb[:, j], 1e-3)
        s = flux0[j] * factor[:, j]
        peak = s * (1 + systematic * rng.standard_normal(n_groups)) + rms * rng.standard_normal(n_groups)
        out[names[j]] = [(t_mid[k], peak[k], rms[k], ["low_pb"] if pb[k, j] < low_pb else [])
                         for k in range(n_groups)]
    return out, {n: kinds[n] for n in out}


def night_metrics(curves: dict) -> dict:
    out = {}
    for name, epochs in curves.items():
        good = [e for e in epochs if not e[3]]
        out[name] = metrics([e[1] for e in good], [e[2] for e in good], mjd=[e[0] for e in good])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_thresholds_flag_the_variables_and_no_constant_source(seed):
    """24 small groups: the flare, the dip and the drift are candidates; no constant source is."""
    curves, kinds = synthetic_night(seed=seed)
    found = night_metrics(curves)
    thresholds = VariabilityThresholds.from_settings(Settings())
    flagged = {n for n, m in found.items() if is_candidate(m, thresholds)}
    assert flagged == {"SIMVAR_FLARE", "SIMVAR_DIP", "SIMVAR_DRIFT"}, {n: found[n] for n in flagged}
    constants = [n for n, k in kinds.items() if k in ("field", "constant")]
    assert len(constants) > 10  # constant sources at small-group SNRs (5-120)


def test_metrics_of_a_time_range(night_catalog):
    """``start_mjd``/``end_mjd``: the metrics of those epochs only (tonight's, say)."""
    cat, good = night_catalog
    lo, hi = T0 + 10.5 * CADENCE_D, T0 + 23.5 * CADENCE_D
    got = view_rows(cat, "SELECT * FROM variability_at(start_mjd := ?, end_mjd := ?)", [lo, hi])
    rows = [r for r in good["FLARE"] if lo <= r["mid_mjd"] <= hi]
    want = metrics([r["peak_jy"] for r in rows], [r["rms_jy"] for r in rows], mjd=[r["mid_mjd"] for r in rows])
    assert got["FLARE"]["n_epochs"] == 13 and got["FLARE"]["eta"] == pytest.approx(want["eta"], rel=1e-9)
    assert "ONE" not in got


# --- the candidates' artifact ----------------------------------------------------------------------

def test_candidates_artifact_lists_the_flare_with_its_plot(settings, night_catalog, prefect_server):
    """``tasks.variability``: the candidates at the settings' thresholds, a PNG each, a markdown artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from contimg import naming
    from tasks.variability import ARTIFACT_KEY, candidates_artifact

    import dataclasses

    from prefect import flow

    @flow
    def candidates_flow(s):  # as the archive flow calls it
        return candidates_artifact(s)

    cat, _ = night_catalog
    settings = dataclasses.replace(settings, catalog_dir=cat)
    found = candidates_flow(settings)
    assert [r["source_name"] for r in found.rows] == ["FLARE"]
    png = naming.lightcurve_png_path(settings.products_dir, "FLARE")
    assert found.plots == {"FLARE": png} and png.read_bytes()[:4] == b"\x89PNG"
    url = naming.product_url(settings, png)
    assert f"| FLARE | 24 | " in found.markdown and f"[png]({url})" in found.markdown
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])))
    assert max(arts, key=lambda a: a.created).data == found.markdown

    # a catalog it cannot read is logged, never raised
    (settings.base_dir / "afile").write_text("not a directory")
    assert candidates_artifact(dataclasses.replace(settings, catalog_dir=settings.base_dir / "afile")) is None


def test_the_queries_of_the_docs_answer(night_catalog):
    """docs/catalog.md's "which sources varied tonight" and "the light curve of J..." on this catalog."""
    import re
    from pathlib import Path

    cat, good = night_catalog
    text = (Path(__file__).resolve().parents[1] / "docs" / "catalog.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    [tonight] = [b for b in blocks if "variability_at(start_mjd" in b]
    assert [r["source_name"] for r in query.query(cat, tonight).to_pylist()] == ["FLARE"]
    [curve] = [b for b in blocks if "FROM photometry" in b and "source_name = " in b]
    rows = query.query(cat, curve.replace("J083536.00+540600.0", "FLARE")).to_pylist()
    assert [r["mid_mjd"] for r in rows] == pytest.approx(sorted([r["mid_mjd"] for r in good["FLARE"]] +
                                                                [T0 + 30 * CADENCE_D, T0 + 31 * CADENCE_D]))
    assert [r["image_kind"] for r in rows].count("mosaic") == 1 and sum(bool(r["flags"]) for r in rows) == 1
    assert rows[0]["utc"].isoformat().startswith("2026-11-25T12:00:00")
