"""A capture that follows its workloads: a pod that a rollout or a scale-up adds joins the
running capture (capture container, interface, packets); one that goes away ends its lane (see
CaptureRun.following). `--max-pods` bounds the pods captured at once.

Core code: progress goes through the Reporter.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from kubectl_zsniff.capture.run import CaptureRun, Reporter
from kubectl_zsniff.errors import ZsniffError
from kubectl_zsniff.kube.client import JSON, KubeClient
from kubectl_zsniff.kube.container import (
    ensure_capture_container,
    namespace_psa_level,
    preflight_refusal,
)
from kubectl_zsniff.kube.follow import PodFollower, pod_key
from kubectl_zsniff.kube.nodecapture import CONTAINER as CAPTURE_POD_CONTAINER
from kubectl_zsniff.kube.pod import check_capturable, describe_pod
from kubectl_zsniff.kube.targets import PodSource
from kubectl_zsniff.kube.vianode import ViaNodePods
from kubectl_zsniff.options import CaptureOptions
from kubectl_zsniff.pipeline.output import OutputPipeline

# A new pod's capture container is created and waited for (about a second on the real
# cluster); a scale-up of several pods is prepared this many at a time.
PREPARING_AT_ONCE = 4
JOIN_TIMEOUT = 60.0


class Following:
    """Joins the new pods of `sources` into a running capture."""

    def __init__(self, kube: KubeClient, run: CaptureRun, pipeline: OutputPipeline,
                 opts: CaptureOptions, levels: dict[str, str | None], reporter: Reporter,
                 sources: list[PodSource], via: ViaNodePods | None = None) -> None:
        self.kube = kube
        self.via = via
        self.run = run
        self.pipeline = pipeline
        self.opts = opts
        self.levels = dict(levels)
        self.reporter = reporter
        known = {(lane.pod.namespace, lane.pod.name) for lane in pipeline.lanes}
        self.follower = PodFollower(kube, sources, known, self._on_new_pod,
                                    reporter.progress)
        self._pool = ThreadPoolExecutor(max_workers=PREPARING_AT_ONCE,
                                        # the CLI's exit does not wait for zsniff-watch
                                        # threads (see cli/app.py _exit)
                                        thread_name_prefix="zsniff-watch-join")
        run.following = True
        run.leaving = self.follower.leaving
        run.on_started = self.follower.start

    def stop(self) -> None:
        self.follower.stop()
        # A preparation under way is not waited for (it may wait --start-timeout for a
        # capture container); its pod is not joined once the capture stops, and a capture
        # container it made exits by itself after --idle-lifetime, as after any interrupted
        # start.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _on_new_pod(self, source: PodSource, pod: JSON) -> None:
        if self.run.stopping:
            return
        self.run.joining(+1)
        try:
            self._pool.submit(self._prepare, source, pod)
        except RuntimeError:  # the pool is shut down: the capture is over
            self.run.joining(-1)

    def _prepare(self, source: PodSource, pod: JSON) -> None:
        namespace, name = pod_key(pod)
        who = f"{namespace}/{name}"
        try:
            if self.run.stopping:
                return
            limit = self.opts.target.max_pods
            if self.run.live_pods() >= limit:
                self.reporter.progress(
                    f"{who} ({source.label}) is not captured: --max-pods {limit} pods are "
                    "captured already")
                return
            info = describe_pod(pod)
            container = check_capturable(info, self.opts.target.container)
            if self.via is not None:
                info, container = self.via.place(pod), CAPTURE_POD_CONTAINER
            else:
                container = self._inject(pod, who, container)
            if self.run.stopping or self.run.loop is None:
                return
            lane = self.pipeline.add_lane(info, container)
            joined = asyncio.run_coroutine_threadsafe(self.run.join(lane), self.run.loop)
            if joined.result(timeout=JOIN_TIMEOUT):
                self.reporter.progress(f"{who} joins the capture ({source.label})")
        except ZsniffError as err:
            self.reporter.progress(f"{who} ({source.label}) is not captured: {err.message}")
        except Exception as exc:  # one pod that cannot join must not end the capture
            self.reporter.progress(f"{who} ({source.label}) is not captured: "
                                   f"{type(exc).__name__}: {exc}")
        finally:
            self.run.joining(-1)

    def _inject(self, pod: JSON, who: str, container: str) -> str:
        """A capture container in the joining pod, as for the first pods; its name."""
        namespace = pod_key(pod)[0]
        if namespace not in self.levels:
            self.levels[namespace] = namespace_psa_level(self.kube, namespace)
        level = self.levels[namespace]
        refusal = preflight_refusal(pod, level, self.opts.inject)
        if refusal is not None:
            raise refusal
        return ensure_capture_container(
            self.kube, pod, container, self.opts.inject,
            lambda message: self.reporter.progress(f"{who}: {message}"), level).name
