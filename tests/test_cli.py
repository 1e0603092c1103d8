"""
The hfendpoint command line, run as a real process.
"""

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hfendpoint.service import GatewayConfig
from hfendpoint.service._cli import build_parser, listen_description, listen_descriptions
from hfendpoint.service._options import OPTIONS, build_config, worker_command
from hfendpoint.service._sizes import parse_size

from .gateway import write_worker


def hfendpoint(*args):
    return getProcessOutputAndValue(
        sys.executable, ["-m", "hfendpoint", *args], env=dict(os.environ), reactor=reactor
    )


class SizeTests(SynchronousTestCase):
    def test_sizes(self):
        self.assertEqual(parse_size("10"), 10)
        self.assertEqual(parse_size("10K"), 10 * 1024)
        self.assertEqual(parse_size("10M"), 10 * 1024**2)
        self.assertEqual(parse_size("1G"), 1024**3)
        self.assertEqual(parse_size("2g"), 2 * 1024**3)

    def test_bad_sizes(self):
        for text in ("", "0", "0K", "-1", "1.5M", "10T", "M", "ten"):
            self.assertRaises(ValueError, parse_size, text)


class ParserTests(SynchronousTestCase):
    def test_defaults(self):
        args = build_parser().parse_args([])
        self.assertEqual(listen_descriptions(args), ["tcp:3000:interface=0.0.0.0"])
        self.assertEqual(args.max_image_capacity, 1024**3)
        self.assertEqual(args.max_body_size, 10 * 1024**2)
        self.assertIsNone(args.worker)

    def test_listen(self):
        """
        C{--listen} takes any endpoint description, repeatable; C{--host}
        and C{--port} add theirs only when given.
        """
        parse = build_parser().parse_args
        args = parse(["--listen", "unix:/tmp/gw.sock", "--listen", "tcp:8080"])
        self.assertEqual(listen_descriptions(args), ["unix:/tmp/gw.sock", "tcp:8080"])
        args = parse(["--listen", "unix:/tmp/gw.sock", "--port", "8000"])
        self.assertEqual(
            listen_descriptions(args), ["unix:/tmp/gw.sock", "tcp:8000:interface=0.0.0.0"]
        )
        args = parse(["--host", "127.0.0.1"])
        self.assertEqual(listen_descriptions(args), ["tcp:3000:interface=127.0.0.1"])

    def test_twistd_options(self):
        from hfendpoint.service._tap import Options

        options = Options()
        options.parseOptions([])
        self.assertEqual(options["config"], GatewayConfig(access_log=True))
        options = Options()
        options.parseOptions(["--listen", "tcp:8000", "--max-body-size", "1M", "--workers", "2"])
        self.assertEqual(
            options["config"],
            GatewayConfig(listen=["tcp:8000"], max_body_size=1024**2, workers=2),
        )

    def test_both_parsers_one_table(self):
        """
        Every option of the table is in both parsers, with the
        configuration's default, and both refuse the same bad values.
        """
        from twisted.python.usage import UsageError

        from hfendpoint.service._tap import Options

        args = build_parser().parse_args([])
        options = Options()
        options.parseOptions([])
        defaults = GatewayConfig()
        for option in OPTIONS:
            expected = getattr(defaults, option.field)
            if option.repeatable:
                self.assertEqual(tuple(getattr(args, option.field)), expected)
                self.assertEqual(tuple(options[option.name]), expected)
            else:
                self.assertEqual(getattr(args, option.field), expected)
                self.assertEqual(options[option.name], expected)
        bad = {"workers": "0", "reply-timeout": "-1", "max-body-size": "1.5M", "max-queued-requests": "-1", "log-format": "xml"}
        for name, value in bad.items():
            self.assertRaises(UsageError, Options().parseOptions, [f"--{name}", value])
            with self.assertRaises(SystemExit):
                build_parser().parse_args([f"--{name}", value])

    def test_bad_listen_is_a_usage_error_of_both_parsers(self):
        """
        An endpoint description is parsed with the options: a bad one is a
        usage error, not a traceback when the service starts listening.
        """
        from twisted.python.usage import UsageError

        from hfendpoint.service._tap import Options

        for option in ("--listen", "--metrics-listen"):
            for description in ("bogus:1", "tcp:notaport", "ssl:443:privateKey=/nonexistent.pem"):
                with self.assertRaises(UsageError) as caught:
                    Options().parseOptions([option, description])
                self.assertIn(f"invalid endpoint description {description!r}", str(caught.exception))
                with self.assertRaises(SystemExit):
                    build_parser().parse_args([option, description])
        args = build_parser().parse_args(["--listen", "unix:/tmp/hfendpoint.sock", "--metrics-listen", "tcp:9100"])
        self.assertEqual(args.listen, ["unix:/tmp/hfendpoint.sock"])

    def test_same_config_from_both(self):
        from hfendpoint.service._tap import Options

        argv = ["--max-restarts", "3", "--idle-timeout", "5", "--embeddings-batch-tokens", "0"]
        args = build_parser().parse_args(argv + ["--listen", "tcp:1"])
        from_cli = build_config(vars(args), None, listen_descriptions(args), True)
        options = Options()
        options.parseOptions(argv + ["--listen", "tcp:1"])
        self.assertEqual(from_cli, options["config"])
        self.assertEqual((from_cli.max_restarts, from_cli.idle_timeout, from_cli.batch_tokens), (3, 5.0, 0))

    def test_python_is_the_gateways_own(self):
        """
        A worker command starting with C{python} runs with the gateway's
        own interpreter, whatever comes first on the PATH.
        """
        self.assertEqual(
            worker_command(["python", "-m", "hfendpoint.workers.demo"]),
            [sys.executable, "-m", "hfendpoint.workers.demo"],
        )
        self.assertEqual(worker_command(["python3", "-V"]), [sys.executable, "-V"])
        self.assertIsNone(worker_command([]))

    def test_access_log_switch(self):
        self.assertTrue(build_parser().parse_args([]).access_log)
        self.assertFalse(build_parser().parse_args(["--no-access-log"]).access_log)

    def test_worker_args_pass_through(self):
        args = build_parser().parse_args(["--port", "8000", "./worker", "--model", "x", "-v"])
        self.assertEqual(args.port, 8000)
        self.assertEqual(args.worker, "./worker")
        self.assertEqual(args.worker_args, ["--model", "x", "-v"])

    def test_listen_description(self):
        self.assertEqual(listen_description("0.0.0.0", 3000), "tcp:3000:interface=0.0.0.0")
        self.assertEqual(listen_description("::1", 80), "tcp:80:interface=\\:\\:1")


class CommandTests(TestCase):
    async def test_version(self):
        out, err, code = await hfendpoint("--version")
        self.assertEqual(code, 0)
        self.assertIn(b"hfendpoint 0.4.0", out)

    async def test_help(self):
        out, err, code = await hfendpoint("--help")
        self.assertEqual(code, 0)
        for option in (b"--host", b"--port", b"--max-image-capacity", b"--max-body-size", b"WORKER_PATH"):
            self.assertIn(option, out)

    async def test_bad_size(self):
        out, err, code = await hfendpoint("--max-body-size", "10X")
        self.assertEqual(code, 2)
        self.assertIn(b"invalid size '10X'", err)

    async def test_bad_listen(self):
        out, err, code = await hfendpoint("--listen", "tcp:http")
        self.assertEqual(code, 2)
        self.assertIn(b"invalid endpoint description 'tcp:http'", err)
        self.assertNotIn(b"Traceback", err)

    async def test_missing_worker(self):
        out, err, code = await hfendpoint("/nonexistent/worker")
        self.assertEqual(code, 2)
        self.assertIn(b"'/nonexistent/worker' does not exist", err)

    async def test_worker_not_executable(self):
        [script] = write_worker(self, "print('hi')\n")
        os.chmod(script, 0o644)
        out, err, code = await hfendpoint(script)
        self.assertEqual(code, 2)
        self.assertIn(b"is not executable", err)

    async def test_worker_exits_during_startup(self):
        [script] = write_worker(self, "import sys\nsys.stderr.write('cannot load model\\n')\nsys.exit(3)\n")
        out, err, code = await hfendpoint("--host", "127.0.0.1", "--port", "0", script)
        self.assertEqual(code, 1)
        self.assertIn(b"worker: cannot load model", err)
        self.assertIn(b"exited with status 3 during start-up", err)

    async def test_port_taken(self):
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        taken = str(port.getHost().port)
        out, err, code = await hfendpoint("--host", "127.0.0.1", "--port", taken)
        self.assertEqual(code, 1)
        self.assertIn(b"cannot listen", err)
        self.assertIn(b"Address already in use", err)
        self.assertNotIn(b"Listening on", err)

    async def test_json_log(self):
        """
        With C{--log-format json}, every line the command writes is a JSON
        object, the worker's own lines included.
        """
        [script] = write_worker(self, "import sys\nsys.stderr.write('cannot load model\\n')\nsys.exit(3)\n")
        out, err, code = await hfendpoint("--log-format", "json", "--host", "127.0.0.1", "--port", "0", script)
        self.assertEqual(code, 1)
        lines = [json.loads(line) for line in err.decode().splitlines()]
        self.assertIn("worker: cannot load model", [line["event"] for line in lines])
        self.assertTrue(any("exited with status 3 during start-up" in line["event"] for line in lines))
        self.assertEqual({"time", "level", "namespace", "event"} - set(lines[0]), set())


class ListenerOutcomeTests(SynchronousTestCase):
    """
    Every caller of C{whenListening} learns how listening went, not only
    the first.
    """

    def test_failure_for_every_caller(self):
        from twisted.internet.defer import fail
        from twisted.internet.error import CannotListenError

        from hfendpoint.service._listeners import RecordingEndpointService

        class Taken:
            def listen(self, factory):
                return fail(CannotListenError("127.0.0.1", 80, OSError("in use")))

        listener = RecordingEndpointService(Taken(), object())
        early = listener.when_listening()
        listener.startService()
        late = listener.when_listening()
        for d in (early, late):
            self.failureResultOf(d, CannotListenError)

    def test_port_for_every_caller(self):
        from twisted.internet.defer import succeed

        from hfendpoint.service._listeners import RecordingEndpointService

        port = object()

        class Free:
            def listen(self, factory):
                return succeed(port)

        listener = RecordingEndpointService(Free(), object())
        early = listener.when_listening()
        listener.startService()
        self.assertIs(self.successResultOf(early), port)
        self.assertIs(self.successResultOf(listener.when_listening()), port)
