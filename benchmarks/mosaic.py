"""Benchmark of the hourly mosaic (issue 20): 12 full-size group images -> one linear mosaic.

Goal: the mosaic of 12 full-size groups takes under 5 % of the hour it covers (12 x 309.24 s = 3711 s: 186 s;
the issue's round figure, 5 % of an hour, is 180 s) on 2 cores.

By default the groups are synthetic, with the geometry of a full-size group image of the pipeline
(``benchmarks/target_fidelity.py``'s target groups at Dec 49.85: 3776 x 3776 pixels of 5.1", restoring beam
72" x 41" PA -89, noise 0.4 mJy/beam), centred on the meridian at each group's mid time (grids 1.29 deg apart in
RA), each with its own drift-averaged beam, written through the imaging products writer
(:func:`contimg.simulate.images.write_group_images`), with point sources of known flux. ``--images`` takes real
group images instead (``<prefix>-image.fits`` with ``<prefix>-pb.fits`` beside each).

Measured in one process, in turn:

* ``pipeline``: :func:`contimg.mosaic.linear.linear_mosaic` as the pipeline runs it (grid, the stacked
  ``[pb I / sigma^2, pb^2 / sigma^2]`` reprojection with ``reproject_interp`` bilinear through
  ``reproject_and_coadd(combine_function="sum")``, three FITS and the PNG written);
* ``baseline``: ``reproject_and_coadd`` on the pbcor images with ``input_weights = pb^2 / sigma^2`` and
  ``combine_function="mean"`` (the library's own weighted mean: data and weights reprojected separately);
* ``--accuracy``: on the first ``--accuracy-groups`` groups only (``reproject_exact`` takes minutes per full-size
  image), the peak of each source (> 20 sigma, truth known) in mosaics made with ``interp`` bilinear, ``interp``
  bicubic, ``adaptive`` and ``exact``.

Usage::

    flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/mosaic.py                    # 12 synthetic groups
    flock /tmp/contimg-bench.lock .venv/bin/python benchmarks/mosaic.py --images 'DIR/*-image.fits'
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contimg import naming  # noqa: E402
from contimg.mosaic.linear import GroupImage, coadd, linear_mosaic, measure_noise, mosaic_grid, read_plane  # noqa: E402
from contimg.mosaic.windows import CADENCE_S  # noqa: E402

#: Full-size group image (benchmarks/target_fidelity.py target groups, WSClean header).
FULL = dict(imsize=3776, cell_arcsec=5.1, beam_arcsec=(72.0, 40.9, -89.4), dec_deg=49.85, noise_jy=4.0e-4)
#: A small geometry to try the script (``--small``): the tests' (8 x 6 pixels per beam).
SMALL = dict(imsize=384, cell_arcsec=50.0, beam_arcsec=(400.0, 300.0, 20.0), dec_deg=49.85, noise_jy=4.0e-4)


def synthetic(work: Path, n: int, *, n_sources: int, seed: int, geometry: dict):
    from contimg.simulate.images import GROUP_S, SIDEREAL_DEG_PER_S, write_group_images

    rng = np.random.default_rng(seed)
    span = n * GROUP_S * SIDEREAL_DEG_PER_S
    ra0 = 90.0
    truth = np.column_stack([ra0 + rng.uniform(-1.5, span + 1.5, n_sources),
                             geometry["dec_deg"] + rng.uniform(-2.3, 2.3, n_sources),
                             10 ** rng.uniform(np.log10(0.01), np.log10(0.5), n_sources)])
    marker = work / "synthetic.json"
    spec = {"n": n, "n_sources": n_sources, "seed": seed, **geometry}
    if marker.exists() and json.loads(marker.read_text()).get("spec") == spec:
        print(f"reusing the synthetic groups in {work}")
        info = json.loads(marker.read_text())
        groups = [GroupImage(g, Path(p + "-image.fits"), Path(p + "-pb.fits"), s) for g, p, s in info["groups"]]
        return groups, truth
    shutil.rmtree(work / "products", ignore_errors=True)
    t = time.perf_counter()
    made = write_group_images(work / "products", truth, n_groups=n, ra0_deg=ra0, seed=seed, **geometry)
    print(f"wrote {n} synthetic groups ({geometry['imsize']} px) in {time.perf_counter() - t:.1f} s")
    for g in made:  # only image and pb are read; the rest is 2.3 GB of disk
        for kind in ("residual", "model", "psf", "pbcor"):
            naming.image_product_path(g.prefix, kind).unlink(missing_ok=True)
    marker.write_text(json.dumps({"spec": spec, "groups": [(g.group_id, str(g.prefix), g.noise_jy) for g in made]}))
    groups = [GroupImage(g.group_id, naming.image_product_path(g.prefix, "image"),
                         naming.image_product_path(g.prefix, "pb"), g.noise_jy) for g in made]
    return groups, truth


def real(pattern: str):
    groups = []
    for image in sorted(glob.glob(pattern)):
        pb = Path(image.replace("-image.fits", "-pb.fits"))
        if pb.exists():
            name = Path(image).name.replace("-image.fits", "")
            groups.append(GroupImage(f"{Path(image).parent.name}/{name}", Path(image), pb, None))
    if not groups:
        raise SystemExit(f"no <prefix>-image.fits with a -pb.fits beside it matches {pattern}")
    return groups


def baseline(groups, noises, wcs, shape, *, pblimit: float):
    """reproject_and_coadd's own weighted mean of the pbcor images (data and weights reprojected separately)."""
    from reproject import reproject_interp
    from reproject.mosaicking import reproject_and_coadd

    data, weights = [], []
    for g, s in zip(groups, noises):
        image, _, wcs_in = read_plane(g.image)
        pb, _, _ = read_plane(g.pb)
        keep = pb >= pblimit
        data.append((np.where(keep, image / np.where(keep, pb, 1), np.nan).astype(np.float32), wcs_in))
        weights.append(np.where(keep, pb**2 / s**2, 0).astype(np.float32))
        del image, pb
    return reproject_and_coadd(data, wcs, shape_out=shape, input_weights=weights, reproject_function=reproject_interp,
                               combine_function="mean", order="bilinear")


def crop(groups, where: Path, size: int):
    """The central ``size`` x ``size`` pixels of each group's image and pb (reproject_exact is slow)."""
    from astropy.io import fits

    where.mkdir(parents=True, exist_ok=True)
    out = []
    for i, g in enumerate(groups):
        files = {}
        for kind, path in (("image", g.image), ("pb", g.pb)):
            data, header, wcs = read_plane(path)
            c0 = (data.shape[0] - size) // 2
            cut = wcs[c0:c0 + size, c0:c0 + size]
            h = cut.to_header()
            for key in ("BMAJ", "BMIN", "BPA", "MJD-OBS", "CRVAL3", "CDELT3"):
                h[key] = header[key]
            files[kind] = where / f"g{i:02d}-{kind}.fits"
            fits.PrimaryHDU(data[c0:c0 + size, c0:c0 + size], h).writeto(files[kind], overwrite=True)
        out.append(GroupImage(g.group_id, files["image"], files["pb"], g.noise_jy))
    return out


def isolated(truth, min_sep_deg: float) -> np.ndarray:
    """Sources with no other truth source within ``min_sep_deg`` (a neighbour's wing would bias a peak)."""
    from astropy.coordinates import SkyCoord

    c = SkyCoord(truth[:, 0], truth[:, 1], unit="deg")
    _, sep, _ = c.match_to_catalog_sky(c, nthneighbor=2)
    return sep.deg > min_sep_deg


def robust_scatter(x) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def peaks_at(image, wcs, truth, radius_pix: float):
    from contimg.qa.sources import peak_pixels  # noqa: F401 (same estimator, on an array here)

    x, y = wcs.world_to_pixel_values(truth[:, 0], truth[:, 1])
    r = int(np.ceil(radius_pix))
    out = np.full(len(x), np.nan)
    for i, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        if r <= yi < image.shape[0] - r and r <= xi < image.shape[1] - r:
            cut = image[yi - r:yi + r + 1, xi - r:xi + r + 1]
            if np.isfinite(cut).all():
                out[i] = cut.max()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", help="glob of real group images (<prefix>-image.fits, -pb.fits beside)")
    parser.add_argument("--n", type=int, default=12, help="synthetic groups (default 12)")
    parser.add_argument("--sources", type=int, default=400, help="synthetic point sources over the hour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "mosaic")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="compare interpolations on a few groups")
    parser.add_argument("--accuracy-groups", type=int, default=2)
    parser.add_argument("--crop", type=int, default=1024, help="accuracy on the central CROP x CROP pixels")
    parser.add_argument("--small", action="store_true", help="small synthetic geometry (to try the script)")
    parser.add_argument("--pblimit", type=float, default=0.2)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    truth = None
    if args.images:
        groups = real(args.images)
    else:
        groups, truth = synthetic(args.work, args.n, n_sources=args.sources, seed=args.seed,
                                  geometry=SMALL if args.small else FULL)
    hour_s = len(groups) * CADENCE_S
    out = args.work / "out"
    paths = {k: naming.mosaic_product_path(out / "bench", k) for k in ("image", "weight", "noise", "png")}

    t = time.perf_counter()
    result = linear_mosaic(groups, paths, pblimit=args.pblimit)
    wall = time.perf_counter() - t
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if k != "total")
    print(f"pipeline: {len(groups)} groups -> {result.shape[1]} x {result.shape[0]} px, {result.coverage_deg2:.1f} deg2: "
          f"{wall:.1f} s ({steps}); {wall / hour_s:.3f} of the {hour_s:.0f} s the groups cover "
          f"({100 * wall / 3600:.1f} % of an hour; goal < 5 %)")
    print(f"  noise at the centre {1e3 * result.noise_center_jy:.4f} mJy/beam, expected from the weights "
          f"{1e3 * result.noise_expected_jy:.4f} (ratio {result.noise_center_jy / result.noise_expected_jy:.3f}); "
          f"group noise median {1e3 * np.median(result.noises_jy):.4f}")
    print(f"  beam {3600 * result.beam_deg[0]:.1f}\" x {3600 * result.beam_deg[1]:.1f}\" PA {result.beam_deg[2]:.1f}; "
          f"BMAJ spread {3600 * result.beam_spread_deg['bmaj'][0]:.1f}-{3600 * result.beam_spread_deg['bmaj'][1]:.1f}\"")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  peak RSS so far {peak_rss:.2f} GB")

    image, _, wcs = read_plane(paths["image"])
    if truth is not None:
        bmaj_pix = result.beam_deg[0] / result.cell_deg
        peaks = peaks_at(image, wcs, truth, radius_pix=0.5 * bmaj_pix)
        snr = peaks / result.noise_expected_jy  # rough: the centre's noise
        bright = np.isfinite(peaks) & (snr > 20) & isolated(truth, 3 * result.beam_deg[0])
        ratio = peaks[bright] / truth[bright, 2]
        print(f"  peak pixel / truth, {bright.sum()} isolated sources > 20 sigma: median {np.median(ratio):.4f}, "
              f"robust scatter {robust_scatter(ratio):.4f}")

    if not args.no_baseline:
        noises = result.noises_jy
        wcs_out, shape, _ = mosaic_grid(groups, pblimit=args.pblimit)
        t = time.perf_counter()
        base, _ = baseline(groups, noises, wcs_out, shape, pblimit=args.pblimit)
        bwall = time.perf_counter() - t
        noise_map, _, _ = read_plane(paths["noise"])
        both = np.isfinite(base) & np.isfinite(image) & (base != 0) & np.isfinite(noise_map)
        z = np.abs(base[both] - image[both]) / noise_map[both]
        print(f"baseline (reproject_and_coadd weighted mean, data and weights reprojected apart; coadd only): "
              f"{bwall:.1f} s vs the pipeline's coadd {result.timings['coadd']:.1f} s "
              f"({bwall / result.timings['coadd']:.2f}x); |difference| / local noise: median {np.median(z):.2e}, "
              f"99.9 % {np.percentile(z, 99.9):.2e}, max {z.max():.2e} (the pb-limit edges)")
        del base

    if args.accuracy and truth is not None:
        few = crop(groups[:args.accuracy_groups], args.work / "crop", args.crop)
        noises = [g.noise_jy or measure_noise(g.image, g.pb) for g in few]
        wcs_out, shape, cell = mosaic_grid(few, pblimit=args.pblimit)
        bmaj_pix = result.beam_deg[0] / cell
        # the reference: the same estimator on one group's own pbcor pixels (no reprojection)
        ref_peaks = np.full(len(truth), np.nan)
        for g in few:
            image_g, _, wcs_g = read_plane(g.image)
            pb_g, _, _ = read_plane(g.pb)
            pbcor = np.where(pb_g >= 0.5, image_g / np.maximum(pb_g, 1e-3), np.nan)
            found = peaks_at(pbcor, wcs_g, truth, radius_pix=0.5 * bmaj_pix)
            ref_peaks = np.where(np.isfinite(ref_peaks), ref_peaks, found)
        good = np.isfinite(ref_peaks) & isolated(truth, 3 * result.beam_deg[0]) & (truth[:, 2] > 0.05)
        ratio = ref_peaks[good] / truth[good, 2]
        print(f"accuracy reference (one group's own pbcor pixels, pb >= 0.5, sources > 50 mJy): {good.sum()} sources: "
              f"median {np.median(ratio):.4f}, robust scatter {robust_scatter(ratio):.4f}")
        for label, method, kw in (("interp bilinear", "interp", {"order": "bilinear"}),
                                  ("interp bicubic", "interp", {"order": "bicubic"}),
                                  ("adaptive", "adaptive", {}),
                                  ("exact", "exact", {})):
            t = time.perf_counter()
            img, w = coadd(few, noises, wcs_out, shape, pblimit=args.pblimit, reprojection=method, **kw)
            seconds = time.perf_counter() - t
            peaks = peaks_at(img, wcs_out, truth, radius_pix=0.5 * bmaj_pix)
            noise = 1 / np.sqrt(np.median(w[w > 0]))
            bright = np.isfinite(peaks) & (peaks / noise > 20) & isolated(truth, 3 * result.beam_deg[0])
            ratio = peaks[bright] / truth[bright, 2]
            print(f"accuracy {label}: {len(few)} groups {seconds:.1f} s ({seconds / len(few):.1f} s/group); "
                  f"peak / truth over {bright.sum()} isolated sources > 20 sigma: median {np.median(ratio):.4f}, "
                  f"robust scatter {robust_scatter(ratio):.4f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
