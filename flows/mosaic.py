"""The mosaic flow: an hour's imaged groups -> a primary-beam-weighted linear mosaic, recorded.

Started three ways:

* ``contimg.group.imaged`` (the trigger of the ``mosaic`` deployment): the hour the imaged group
  belongs to is mosaicked if it is closed (:func:`tasks.mosaic.window_closed`: nothing pending, and
  every slot of the cadence filled, or a later group recorded, or ``mosaic_settle_s`` past the hour).
  The last group of an hour is usually imaged before the next hour's first group is recorded, so its
  own event makes the mosaic whenever the hour's slots are all filled;
* the hourly schedule behind it (no arguments): every closed hour of the last
  ``mosaic_lookback_hours`` not yet mosaicked from the same groups (a lost event delays a mosaic by
  an hour at most);
* by hand with ``start`` and ``end`` (``contimg mosaic``): that window, partial or not, with what was
  missing and why.

Idempotent: a mosaic of the same groups already recorded is not made again (``force`` remakes it).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from contimg.mosaic import windows
from flows._groups import check_instance, settings_for
from tasks import mosaic as mosaic_tasks


def _markdown(rows: list[dict]) -> str:
    lines = ["| mosaic | status | groups | missing | noise (mJy/beam) | expected | image |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        missing = "; ".join(f"{g}: {why}" for g, why in zip(r["missing"], r["missing_reason"])) or "-"
        lines.append(f"| {r['mosaic_id']} | {'already made' if r['skipped'] else r['status']} | {len(r['group_ids'])} "
                     f"| {missing.replace('|', '/')[:400]} | {1e3 * r['noise_center_jy']:.3f} "
                     f"| {1e3 * r['noise_expected_jy']:.3f} | {r['image_path']} |")
    return "\n".join(lines)


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"mosaic-{p.get('group_id') or p.get('start') or 'sweep'}"


@flow(name="mosaic", flow_run_name=_run_name, log_prints=True)
def mosaic(group_id: str | None = None, *, start: str | None = None, end: str | None = None, force: bool = False,
           base_dir: str | None = None, instance: str | None = None) -> list[dict]:
    """Mosaic an hour (or a window) of imaged groups; see the module docstring.

    Parameters
    ----------
    group_id : str, optional
        An imaged group (the event's): its hour, if closed.
    start, end : str, optional
        An explicit window (UTC, ``YYYY-MM-DDTHH:MM[:SS]``): made whatever is missing.
    force : bool
        Remake a mosaic already recorded.
    base_dir, instance : str, optional
        As the other flows (:func:`flows._groups.check_instance`).

    Returns
    -------
    list of dict
        The ``mosaics`` rows made or found (``skipped`` True: already made); empty when nothing was due.
    """
    logger = get_run_logger()
    settings = settings_for(base_dir)
    check_instance(settings, instance=instance)
    if start is not None or end is not None:
        if start is None or end is None:
            raise ValueError("give both start and end, or neither")
        due = [(windows.parse_time(start), windows.parse_time(end))]
    elif group_id is not None:
        hour = windows.hour_window(group_id)
        inputs = mosaic_tasks.window_inputs(settings, *hour)
        if not mosaic_tasks.window_closed(settings, inputs):
            logger.info("%s: its hour %s is not closed yet (pending: %s); the hourly sweep will make it", group_id,
                        f"{hour[0]:%Y-%m-%dT%H:%M}", ", ".join(inputs.pending) or "empty slots")
            return []
        due = [hour]
    else:
        due = mosaic_tasks.hours_to_mosaic(settings)
        logger.info("%d closed hour(s) to mosaic", len(due))
    rows, failed = [], []
    for window in due:  # one hour failing does not keep the sweep from the others
        state = mosaic_tasks.task_mosaic(settings, *window, force=force, return_state=True)
        if state.is_completed():
            rows.append(state.result())
        elif isinstance(error := state.result(raise_on_failure=False), mosaic_tasks.MosaicHeldError):
            logger.info("%s", error)  # the run holding it records it
        else:
            failed.append(f"{window[0]:%Y-%m-%dT%H:%M}: {state.message}")
            logger.error("mosaic of %s failed: %s", f"{window[0]:%Y-%m-%dT%H:%M}", state.message)
    if rows:
        create_markdown_artifact(key="mosaic-summary", markdown=_markdown(rows), description="mosaics")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(due)} mosaic(s) failed: " + "; ".join(failed))
    return rows
