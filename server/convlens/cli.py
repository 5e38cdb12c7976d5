"""The ``convlens`` command: serve, list models and methods, and run a method headless."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from werkzeug.serving import WSGIRequestHandler

from .errors import BadInput

EXIT_BAD_INPUT = 2


class NoDelayRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler with TCP_NODELAY on its sockets.

    A binary Socket.IO event is two websocket messages; with Nagle's algorithm the second
    waits for the client's delayed ACK (40 ms), which capped a viewer at ~20 frames/s
    (bench/stream_fps.py measured 19.7 → 70.3 frames/s with it). gunicorn sets it already.
    """

    disable_nagle_algorithm = True


def main(argv: list[str] | None = None) -> int:
    from .runtime import tune_malloc

    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args) or 0
    except BadInput as error:
        print(f"convlens: error: {error.field}: {error.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convlens", description="See inside image CNNs.")
    parser.add_argument(
        "--models-dir",
        action="append",
        type=Path,
        help="a folder of model files to serve too (repeatable; only read, never written to)",
    )
    parser.add_argument(
        "--datasets-dir",
        action="append",
        type=Path,
        help="a folder whose sub-folders are data sets (repeatable; only read, never written to)",
    )
    # Also after the command's name (`convlens models --models-dir DIR`); the folders of both places count.
    command_options = argparse.ArgumentParser(add_help=False)
    command_options.add_argument(
        "--models-dir", dest="command_models_dirs", action="append", type=Path, help=argparse.SUPPRESS
    )
    command_options.add_argument(
        "--datasets-dir", dest="command_datasets_dirs", action="append", type=Path, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[command_options], help="serve the web UI and API")
    serve.add_argument("--host", default=os.environ.get("CONVLENS_HOST", "127.0.0.1"))
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", os.environ.get("CONVLENS_PORT", 5000)))
    )
    serve.add_argument("--debug", action="store_true")
    serve.add_argument(
        "--no-token",
        action="store_true",
        help="serve a non-loopback --host without CONVLENS_TOKEN: anyone who reaches it may use it",
    )
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker",
        parents=[command_options],
        help="run the jobs web processes queue (CONVLENS_JOB_QUEUE=rq) from CONVLENS_REDIS_URL",
    )
    worker.add_argument(
        "--device",
        default=os.environ.get("CONVLENS_WORKER_DEVICE", "cpu"),
        help="cpu (default) or cuda:N; a cpu worker takes jobs asking for cpu or any, a GPU one gpu or any",
    )
    worker.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime threads of each job (default: CONVLENS_THREADS, else one per CPU); "
        "workers sharing a machine should share its cores",
    )
    worker.add_argument("--burst", action="store_true", help="stop once the queues are empty")
    worker.add_argument("--name", help="the worker's name (default: RQ's, a random one)")
    worker.set_defaults(handler=cmd_worker)

    cluster = commands.add_parser(
        "cluster",
        parents=[command_options],
        help="start Redis, web processes behind nginx and workers, and keep them running",
    )
    cluster.add_argument("--web", type=int, default=2, help="web processes (default 2)")
    cluster.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    cluster.add_argument("--host", default="127.0.0.1", help="the address nginx listens on")
    cluster.add_argument("--port", type=int, default=5000, help="the port nginx listens on")
    cluster.add_argument("--device", default="cpu", help="the workers' device: cpu (default) or cuda:N")
    cluster.add_argument(
        "--no-token",
        action="store_true",
        help="serve a non-loopback --host without CONVLENS_TOKEN: anyone who reaches it may use it",
    )
    cluster.set_defaults(handler=cmd_cluster)

    models = commands.add_parser("models", parents=[command_options], help="list the models")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=cmd_models)

    methods = commands.add_parser(
        "methods", parents=[command_options], help="list the analysis methods and their parameters"
    )
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(handler=cmd_methods)

    datasets = commands.add_parser("datasets", parents=[command_options], help="list the data sets")
    datasets.add_argument("--json", action="store_true", help="machine-readable output")
    datasets.set_defaults(handler=cmd_datasets)

    export = commands.add_parser(
        "export", help="write a torch module as .onnx, .pt and .pt2 files with a card, for --models-dir"
    )
    export.add_argument(
        "model", help="a torchvision classifier's name (resnet18), or module:attr of your own"
    )
    export.add_argument("--out", required=True, type=Path, help="the folder to write into (made if missing)")
    export.add_argument(
        "--weights", type=Path, help="a state-dict file; without it a torchvision model has random weights"
    )
    export.add_argument("--size", type=int, nargs="+", default=[224], metavar="PX", help="H [W] (224)")
    export.add_argument("--mean", type=float, nargs=3, metavar="X", help="R G B (ImageNet's)")
    export.add_argument("--std", type=float, nargs=3, metavar="X", help="R G B (ImageNet's)")
    export.add_argument(
        "--labels", type=Path, help="a text file, one class a line (ImageNet's for torchvision)"
    )
    export.add_argument("--name", help="the files' stem (the model's or attribute's name)")
    export.add_argument("--title", help="the card's title (the name)")
    export.add_argument(
        "--format", action="append", choices=["onnx", "pt", "pt2"], help="only this format (repeatable)"
    )
    export.set_defaults(handler=cmd_export)

    run = commands.add_parser(
        "run", parents=[command_options], help="run a method without the server and write its results"
    )
    run.add_argument("method")
    run.add_argument("--model", default=None, help="model id (file name) or stem; default: the default model")
    run.add_argument(
        "--image", help="a sample's name (chelsea) or an image file; default with --dataset: the first sample"
    )
    run.add_argument(
        "--dataset", help="a data set's id (see `convlens datasets`), for the method's dataset parameter"
    )
    run.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a method parameter (repeatable)"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--out", required=True, type=Path, help="folder for the PNGs, frames.gif and result.json"
    )
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(handler=cmd_run)

    new_plugin = commands.add_parser(
        "new-plugin", help="write a new plugin's installable distribution: a method, its tests, a README"
    )
    new_plugin.add_argument("name", help="the distribution's name (my-lens); its package is my_lens")
    new_plugin.add_argument("--out", type=Path, help="the folder to write (default ./NAME); missing or empty")
    new_plugin.set_defaults(handler=cmd_new_plugin)

    report = commands.add_parser(
        "report",
        parents=[command_options],
        help="write a done run (from the data folder's job records) as one self-contained HTML file",
    )
    report.add_argument("job_id", metavar="JOB_ID")
    report.add_argument(
        "-o", "--out", type=Path, help="the file (or folder) to write; default ./convlens-METHOD-JOB_ID.html"
    )
    report.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    report.set_defaults(handler=cmd_report)
    return parser


def _config(args: argparse.Namespace):
    from .config import Config

    config = Config()
    models_dirs = [*(args.models_dir or []), *(getattr(args, "command_models_dirs", None) or [])]
    if models_dirs:
        config.models_dirs = models_dirs
    datasets_dirs = [*(args.datasets_dir or []), *(getattr(args, "command_datasets_dirs", None) or [])]
    config.datasets_dirs = [*config.datasets_dirs, *datasets_dirs]
    return config


def _datasets(args: argparse.Namespace):
    from .app import build_dataset_library
    from .plugins import get_plugin_manager

    return build_dataset_library(get_plugin_manager(), _config(args))


def _store(args: argparse.Namespace):
    from .models.store import ModelStore

    config = _config(args)
    store = ModelStore([*config.models_dirs, config.trained_dir], default_dir=config.default_models_dir)
    store.ensure_default(log=lambda message: print(message, file=sys.stderr))
    return store


def _serving_config(args: argparse.Namespace):
    """The server's settings, said at start-up; refused (exit 2) on an address other machines reach without a
    token, unless ``--no-token`` (:func:`convlens.auth.access_at_start`)."""
    from .auth import access_at_start

    config = _config(args)
    if config.job_queue not in ("", "rq"):
        raise BadInput(
            "CONVLENS_JOB_QUEUE",
            f"expected rq (workers) or nothing (jobs run here), got {config.job_queue!r}",
        )
    if config.job_queue and not config.redis_url:
        raise BadInput("CONVLENS_JOB_QUEUE", "workers need a Redis: set CONVLENS_REDIS_URL too")
    config.allow_no_token = config.allow_no_token or args.no_token
    access = access_at_start(args.host, config.token, config.allow_no_token)
    print(f"convlens: access: {access}", file=sys.stderr, flush=True)
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    """gunicorn as the Procfile runs it (:mod:`convlens.serving`); ``--debug``: Werkzeug's development server."""
    from .app import create_app
    from .runtime import configure_threads
    from .serving import serve

    config = _serving_config(args)

    def worker_app():
        configure_threads()
        return create_app(config)

    print(f"convlens: serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    if not args.debug:
        serve(worker_app, args.host, args.port)
        return 0
    app = worker_app()
    app.extensions["socketio"].run(
        app,
        host=args.host,
        port=args.port,
        debug=True,
        use_reloader=False,
        allow_unsafe_werkzeug=True,
        request_handler=NoDelayRequestHandler,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from . import worker

    if args.threads is not None:
        if not 0 < args.threads <= 1024:
            raise BadInput("threads", f"expected 1 to 1024 threads, got {args.threads}")
        os.environ["CONVLENS_THREADS"] = str(args.threads)  # before torch is imported: its horses inherit it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"convlens: worker on {args.device}", file=sys.stderr, flush=True)
    worker.run(_config(args), args.device, burst=args.burst, name=args.name)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Redis, ``--web`` web processes behind nginx on ``--host:--port`` and ``--workers`` workers
    (:mod:`convlens.cluster`), until SIGINT or SIGTERM."""
    from . import cluster

    config = _serving_config(args)
    folders = [*(args.models_dir or []), *(args.command_models_dirs or [])]
    options = [f"--models-dir={folder.resolve()}" for folder in folders]
    datasets = [*(args.datasets_dir or []), *(args.command_datasets_dirs or [])]
    options += [f"--datasets-dir={folder.resolve()}" for folder in datasets]
    return cluster.run(config, args.host, args.port, args.web, args.workers, args.device, options)


def cmd_models(args: argparse.Namespace) -> int:
    store = _store(args)
    models = [store.get(model_id).to_json() for model_id in store.ids()]
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        for model in models:
            size = "x".join(map(str, model["input_size"]))
            print(
                f"{model['id']:<36} {model['format']:<12} {size:<9} {model['num_classes']:>5} classes  {model['title']}"
            )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .plugins import get_methods

    registry = get_methods()
    methods = [{**m.to_json(), "plugin": registry.plugin_of[m.name]} for m in registry]
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for method in methods:
        needs = f" (needs {', '.join(method['needs'])})" if method["needs"] else ""
        print(f"{method['name']:<20} {method['topic']}: {method['title']}{needs}")
        for param in method["params"]:
            bounds = _bounds(param)
            print(f"    {param['name']:<16} {param['type']:<7} default {param['default']!r}{bounds}")
    return 0


def _bounds(param: dict[str, Any]) -> str:
    if "enum" in param:
        return f", one of {param['enum']}"
    if "minimum" in param or "maximum" in param:
        return f", in [{param.get('minimum', '-inf')}, {param.get('maximum', 'inf')}]"
    return ""


def cmd_datasets(args: argparse.Namespace) -> int:
    listing = _datasets(args).list()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for dataset in listing:
        if "error" in dataset:
            print(f"{dataset['id']:<24} error: {dataset['error']}")
            continue
        labels = f"{len(dataset['labels'])} labels" if dataset["labels"] else "unlabelled"
        print(f"{dataset['id']:<24} {dataset['count']:>7} images  {labels:<12} {dataset['title']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Exit 0 with every format written, 1 when some failed (each named with its reason on stderr)."""
    from .export import FORMATS, IMAGENET_MEAN, IMAGENET_STD, export_model

    # As `python -m` does, and uvicorn for its app: `module:attr` may name a module in the current folder.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    report = export_model(
        args.model,
        args.out,
        name=args.name,
        input_size=args.size,
        mean=args.mean or IMAGENET_MEAN,
        std=args.std or IMAGENET_STD,
        labels=args.labels,
        weights=args.weights,
        title=args.title,
        formats=args.format or FORMATS,
    )
    for note in report.notes:
        print(f"convlens: note: {note}", file=sys.stderr)
    for fmt, path in report.files.items():
        print(f"convlens: wrote {path} (max |dlogit| {report.max_abs_diff[fmt]:.2g})", file=sys.stderr)
    for fmt, reason in report.errors.items():
        print(f"convlens: error: {fmt}: {reason}", file=sys.stderr)
    print(json.dumps(report.to_json()))
    return 1 if report.errors else 0


def _with_dataset(method, raw_params: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    """``raw_params`` with ``--dataset`` as the value of the method's (first) ``dataset`` parameter."""
    names = [p.name for p in method.params if p.kind == "dataset"]
    if not names:
        raise BadInput("dataset", f"method {method.name!r} takes no data set")
    return {**raw_params, names[0]: dataset_id}


def cmd_run(args: argparse.Namespace) -> int:
    from . import events as ev
    from . import runner
    from .app import build_library
    from .params import parse_assignments
    from .plugins import get_methods, get_plugin_manager
    from .results import Reel, RunRecord, write_result
    from .runtime import configure_threads

    configure_threads()
    method = get_methods().get(args.method)
    raw_params = parse_assignments(method.params, args.param)
    if args.dataset is not None:
        raw_params = _with_dataset(method, raw_params, args.dataset)
    elif args.image is None:
        raise BadInput("image", "give --image (a sample's name or an image file), or --dataset")
    store = _store(args)
    model = store.get(args.model or store.default_id)
    library = build_library(get_plugin_manager(), _config(args))
    library.datasets = _datasets(args)  # so --image dataset:<id>:<index> names a data set's image
    image_id, pixels = library.resolve(args.image or next(iter(library.samples)))
    ctx = runner.prepare_run(
        method,
        model,
        pixels,
        raw_params,
        args.seed,
        images=lambda name: library.resolve(name)[1],
        datasets=_datasets(args).get,
        features=runner.feature_store(_config(args).features_dir),
        models=store,
    )
    predictions = model.predict(ctx.model_input(), k=5)
    reel, metrics, final, tops = Reel(), {}, ev.Result(), ev.PanelTops()
    for event in runner.iterate(method, ctx):
        if isinstance(event, ev.Frame):
            reel.add(ev.held(event.image))
        elif isinstance(event, ev.Metrics):
            metrics = {name: float(value) for name, value in event.values.items()}
        elif isinstance(event, ev.Predictions):
            tops.add(event)
        elif isinstance(event, ev.Progress) and not args.quiet:
            print(f"\r{method.name}: {event.step}/{event.total}", end="", file=sys.stderr, flush=True)
        elif isinstance(event, ev.Log) and not args.quiet:
            print(f"\n{event.level}: {event.message}", file=sys.stderr)
        elif isinstance(event, ev.Result):
            final = event
    if not args.quiet:
        print(file=sys.stderr)
    record = RunRecord(
        method.name,
        model.id,
        model.sha256,
        model.format,
        image_id,
        ctx.params,
        args.seed,
        predictions,
        metrics,
        final.data,
        ev.panel_predictions(tops),
    )
    frames = reel.frames()
    images = dict(final.images) or ({"final": frames[-1]} if frames else {})
    summary = write_result(
        args.out, record, images, frames, final.arrays, final.models, _config(args).trained_dir
    )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "files": summary["files"],
                "animation": summary["animation"],
                "models": summary["models"],
            }
        )
    )
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .new_plugin import write_plugin

    out = write_plugin(args.name, args.out)
    print(f"convlens: wrote {out}; next: pip install -e {out} && pytest {out}", file=sys.stderr)
    print(json.dumps({"out": str(out)}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(_config(args), args.job_id, args.out, force=args.force)
    print(f"convlens: wrote {out}", file=sys.stderr)
    print(json.dumps({"out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
