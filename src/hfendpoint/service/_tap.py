"""
The twistd plugin's options and service:

    twistd -n hfendpoint --listen tcp:3000 --worker ./worker [-- worker args...]
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python import usage

from hfendpoint.service._options import FLAGS, LISTEN_HELP, OPTIONS, build_config, worker_command


def _coerce(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # usage.Options reports a coercer's ValueError itself; its docstring
    # is what the help shows for the value's type.
    def coerce(text: str) -> Any:
        return parse(text)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _endpoint(description: str) -> str:
    from hfendpoint.service._cli import endpoint_description

    try:
        return endpoint_description(description)
    except ValueError as e:
        raise usage.UsageError(str(e))


def _option(name: str) -> Any:
    return next(option for option in OPTIONS if option.name == name)


class Options(usage.Options):
    synopsis = "[options] [-- worker arguments...]"
    longdesc = (
        "Serve a model worker behind OpenAI-compatible HTTP endpoints. "
        "Without --worker, the built-in demo worker is served. Arguments after "
        "the options are passed to the worker; a worker named 'python' runs with "
        "the gateway's own interpreter."
    )

    optFlags = [["no-access-log", None, "Do not log a line for each HTTP request."]] + [
        [flag.name, None, flag.help[0].upper() + flag.help[1:] + "."] for flag in FLAGS
    ]

    optParameters = [
        ["worker", "w", None, "The worker executable (default: the built-in demo worker)."],
    ] + [
        [option.name, None, option.default, option.describe(), _coerce(option.parse)]
        for option in OPTIONS
        if not option.repeatable
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        for option in OPTIONS:
            if option.repeatable:
                self[option.name] = list(option.default)

    def opt_listen(self, description: str) -> None:
        self["listen"].append(_endpoint(description))

    opt_listen.__doc__ = LISTEN_HELP

    def opt_metrics_listen(self, description: str) -> None:
        self["metrics-listen"].append(_endpoint(description))

    opt_metrics_listen.__doc__ = _option("metrics-listen").describe()

    def opt_api_key(self, key: str) -> None:
        self["api-key"].append(key)

    def opt_cors_origin(self, origin: str) -> None:
        self["cors-origin"].append(origin)

    opt_api_key.__doc__ = _option("api-key").describe()
    opt_cors_origin.__doc__ = _option("cors-origin").describe()

    def parseArgs(self, *worker_args: str) -> None:
        self["worker_args"] = list(worker_args)

    def postOptions(self) -> None:
        from hfendpoint.backend._process import WorkerNotFound

        if self["worker"] is None and self["worker_args"]:
            raise usage.UsageError("worker arguments were given without --worker")
        try:
            command = worker_command([self["worker"], *self["worker_args"]] if self["worker"] else [])
        except WorkerNotFound as e:
            raise usage.UsageError(str(e))
        self["config"] = build_config(
            {
                **{option.field: self[option.name] for option in OPTIONS},
                **{flag.field: not self[flag.name] for flag in FLAGS},
            },
            command,
            self["listen"] or ["tcp:3000"],
            not self["no-access-log"],
        )


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from hfendpoint.service._cli import reload_keys_on_hangup
    from hfendpoint.service._service import GatewayService
    from hfendpoint.service._tuning import tune_process

    gateway = GatewayService(reactor, options["config"])
    gateway.stop_reactor_on_failure = True
    reload_keys_on_hangup(reactor, gateway)
    tune_process(reactor)
    return gateway
