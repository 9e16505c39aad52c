"""What the calibrator and target flows share: settings, the instance check and resolving a group id or MS path."""

from __future__ import annotations

import os
from pathlib import Path

from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from contimg import naming
from contimg.config import Settings, load_settings, pipeline_instance
from contimg.errors import InvalidInputError
from tasks import records
from tasks.calibration import group_id_of


def settings_for(base_dir: str | None) -> Settings:
    settings = load_settings(base_dir=Path(base_dir) if base_dir else None)
    settings.ensure_dirs()
    return settings


def check_instance(settings: Settings, *, instance: str | None = None, ms_or_group_id: str | None = None) -> None:
    """Refuse a run meant for another pipeline instance, before it reads or writes anything.

    Two instances (two base directories) can share one Prefect server; their
    deployments carry their own instance (:func:`contimg.config.pipeline_instance`)
    as the ``instance`` parameter, and their triggers pass the instance of the
    event. A run whose ``instance`` is not the one of this process's settings
    (a worker started with another ``CONTIMG_BASE_DIR``, another instance's
    event) would otherwise look for another instance's group here and fail, or
    worse, record it in this catalog.

    Parameters
    ----------
    settings : Settings
        This process's settings (their instance is the one that may run).
    instance : str, optional
        The instance the run was started for (unset: a run by hand, for this one).
    ms_or_group_id : str, optional
        A group id (always this instance's) or an MS path, which must be under
        this instance's products, archive or scratch directory (not checked if
        it does not exist: :func:`resolve` says so).

    Raises
    ------
    InvalidInputError
        The run belongs to another instance.
    """
    own = pipeline_instance(settings)
    if instance is not None and instance != own:
        raise InvalidInputError(
            f"this run is for pipeline instance {instance}, but this process's settings are instance {own} "
            f"(catalog {settings.catalog_dir}); nothing done (is CONTIMG_BASE_DIR the instance's?)")
    text = str(ms_or_group_id or "").rstrip("/")
    if not text or _is_group_id(text) or not Path(text).exists():
        return
    path = Path(os.path.realpath(text))
    homes = (settings.products_dir, settings.archive_dir, settings.scratch_dir)
    if not any(path.is_relative_to(os.path.realpath(home)) for home in homes):
        raise InvalidInputError(
            f"{text} is not under the products, archive or scratch directory of pipeline instance {own} "
            f"({settings.products_dir}): another instance's MS? nothing done")


def resolve(settings: Settings, ms_or_group_id: str) -> tuple[Path, str]:
    """``(MS path, group id)`` of a group id (its recorded MS, else where naming puts it) or an MS path.

    Raises
    ------
    InvalidInputError
        There is no such MS.
    """
    text = str(ms_or_group_id).rstrip("/")
    if _is_group_id(text):
        latest = records.latest_ms(settings, text) or {}
        path = Path(latest["path"]) if latest.get("path") else naming.ms_path(settings.products_dir, text)
        group_id = text
    else:
        path, group_id = Path(text), None
    if not path.is_dir():
        raise InvalidInputError(f"{text}: no MS at {path} (not converted yet? see `contimg status`)")
    path = path.resolve()
    return path, group_id or group_id_of(path)


def _is_group_id(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.strptime(text, naming.GROUP_ID_FORMAT)
    except ValueError:
        return False
    return True


#: What a sweep reports for a group handed to a deployment run.
SUBMITTED = "submitted"
#: ... and for a group that already has a run of that deployment waiting or running (none is added).
QUEUED = "queued"


class HandOff:
    """Hands each group of a sweep to its own flow run: a deployment run, else a subflow.

    With ``deployment`` (``"<flow>/<deployment>"``) each run is submitted to it
    without waiting, so that groups run side by side on every worker serving it;
    if the deployment does not exist, the sweep says so once and falls back to
    subflows. Without it each group run is a subflow of the sweep, in turn.
    """

    def __init__(self, flow_fn, deployment: str | None, logger) -> None:
        self.flow_fn, self.deployment, self.logger = flow_fn, deployment, logger

    def __call__(self, run_name: str, parameters: dict) -> tuple[str, str, dict | None]:
        """Run or submit one group: ``(state, detail, result)``.

        ``state`` is ``submitted`` (``detail`` names the flow run), ``queued``
        (a run of the same name is scheduled, pending or running: its trigger
        came first, so none is added), ``failed``
        (``detail`` is the run's message) or ``completed`` with the subflow's
        ``result``.
        """
        if self.deployment and (queued := _queued_run(self.deployment, run_name)):
            return QUEUED, f"flow run {queued.name} ({queued.id}) is {queued.state_name}", None
        if self.deployment:
            try:
                run = run_deployment(self.deployment, parameters=parameters, timeout=0, flow_run_name=run_name)
            except ObjectNotFound:
                self.logger.error("no deployment %s: the group runs of this sweep are its subflows", self.deployment)
                self.deployment = None
            else:
                return SUBMITTED, f"flow run {run.name} ({run.id})", None
        outcome = self.flow_fn(**parameters, return_state=True)
        if outcome.is_completed():
            return "completed", "", outcome.result()
        message = str(outcome.message or "").replace("|", "/")[:300]
        self.logger.error("%s failed: %s", run_name, outcome.message)
        return "failed", message, None


def summary_markdown(states: dict[str, str], details: dict[str, str]) -> str:
    """A markdown table of a sweep's groups: group, state, detail."""
    lines = ["| group | state | detail |", "|---|---|---|"]
    lines += [f"| {g} | {states[g]} | {details.get(g, '')} |" for g in sorted(states)]
    return "\n".join(lines)


def _queued_run(deployment: str, run_name: str):
    """A run of ``deployment`` named ``run_name`` that is scheduled, pending or running, if any.

    Each group's event starts its run and the periodic sweeps look again: without
    this, a sweep that comes while the event's run waits for a worker adds a
    second run of the group, which only finds the lease held or the work done,
    but costs a worker slot and a Python start-up (~15 s here) all the same.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterName, FlowRunFilter,
                                                FlowRunFilterName, FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[run_name]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(
                        any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment.split("/")[-1]])),
                limit=1)
    except Exception:  # noqa: BLE001 - when in doubt, submit: the lease keeps the group to one run
        return None
    return runs[0] if runs else None
