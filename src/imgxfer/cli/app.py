"""The `imgxfer` command line: a thin layer over the library (pipeline, plugins, install)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from imgxfer import __version__
from imgxfer.cli.builtin import LAZY_COMMANDS, add_builtin_commands, load_command
from imgxfer.cli.context import CliState, current_registry
from imgxfer.cli.run_options import run_options
from imgxfer.core.config import STAGES, RunConfig
from imgxfer.core.errors import UserError
from imgxfer.plugin.registry import KINDS, TASKS

if TYPE_CHECKING:  # the schema is read at run time through RunMetrics objects only
    from imgxfer.plugin.host import PluginHost
    from imgxfer.run.metrics import RunMetrics

out = Console()
err = Console(stderr=True)

BUILTIN_COMMANDS = ("run", "plugins", "list", "install", "uninstall")


class FriendlyError(click.ClickException):
    """A user error, shown as one sentence with exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _host() -> PluginHost:
    """Load plugins, turning their warnings into one-line messages on stderr."""
    from imgxfer.plugin.host import get_host

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = get_host()
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    return host


class ImgxferGroup(click.Group):
    """Adds commands lazily. Built-in commands (uninstall above all) never load plugins,
    so a broken plugin cannot lock the user out of removing it; `imgxfer --help` lists
    imgxfer's own commands from a table (:mod:`imgxfer.cli.builtin`) without importing
    them or loading plugins, so it stays fast; any other name loads the plugins."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        if not getattr(self, "_plugins_added", False):  # help: no plugins loaded for it
            return sorted(set(self.commands) | set(LAZY_COMMANDS))
        return super().list_commands(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.commands[name].get_short_help_str(limit=formatter.width)
                 if name in self.commands else LAZY_COMMANDS[name].short_help)
                for name in self.list_commands(ctx)
                if name not in self.commands or not self.commands[name].hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            self.add_command(load_command(name))
        if name in BUILTIN_COMMANDS or name in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        error = self._add_plugin_commands()
        command = super().get_command(ctx, name)
        if command is None and error is not None:
            # The command may be the failed plugin's: its error, not "No such command".
            raise FriendlyError(str(error))
        return command

    def _add_plugin_commands(self) -> Exception | None:
        """Add imgxfer's own commands (predict, generate...), then the plugins', once; the
        error that stopped the plugins' (strict mode), if any."""
        if not getattr(self, "_plugins_added", False):
            self._plugins_added, self._plugin_error = True, None
            add_builtin_commands(self)
            try:
                _host().add_commands(self)
            except Exception as exc:  # strict mode: report, but keep the CLI usable
                self._plugin_error = exc
        return self._plugin_error

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_in_one_line(ctx):
            try:
                return super().invoke(ctx)
            except UserError as exc:
                raise FriendlyError(str(exc)) from None

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        # The plugin host travels with the context: commands take it from there
        # (imgxfer.cli.context), loaded on first use.
        extra.setdefault("obj", CliState(_host))
        with _usage_in_one_line(None):  # options of `imgxfer` itself, e.g. `imgxfer --bogus`
            return super().make_context(info_name, args, parent, **extra)


# A group called without arguments shows its help; Click >= 8.2 does that by raising a
# UsageError subclass, which must stay the help it is.
_SHOW_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def _usage_in_one_line(ctx: click.Context | None) -> Iterator[None]:
    """Click prints usage, a hint and the error on four lines; one sentence and where to
    look reads better (and has the shape of every other error)."""
    try:
        yield
    except _SHOW_HELP:
        raise
    except click.UsageError as exc:
        where = exc.ctx or ctx
        path = where.command_path if where else "imgxfer"
        message = exc.format_message().rstrip()
        end = "" if message.endswith((".", "?", "!")) else "."
        raise FriendlyError(f"{message}{end} See '{path} --help'.") from None


def _table(title: str, columns: list[str], rows: list[list[str]], console: Console, *,
           whole: tuple[str, ...] = ()) -> Table:
    """A table whose cells wrap only at spaces, so a name or an option token
    (``encoder_lr_scale=0.3``) is never cut: each column is at least as wide as its
    longest word, and the ``whole`` columns (names, commands) as their longest line.
    Only a word wider than the terminal allows is folded. Cells may hold rich markup."""
    plain = [[Text.from_markup(cell).plain for cell in row] for row in rows]
    least, most = [], []
    for i, name in enumerate(columns):
        lines = [line for row in plain for line in row[i].splitlines()] or [""]
        words = [w for line in lines + [name] for w in line.split()] or [""]
        longest = max(cell_len(line) for line in lines)
        least.append(max(max(map(cell_len, words)), longest if name in whole else 0))
        most.append(max(longest, cell_len(name)))
    # Borders and one space of padding on each side of every cell.
    widths = _share(least, most, console.width - 3 * len(columns) - 1,
                    [name not in whole for name in columns])
    # At least as wide as the title's longest word, so that the title wraps at its spaces
    # and a path in it stays whole on one line (a narrow table folded it mid-path).
    longest_word = max(map(cell_len, title.split()), default=0)
    table = Table(title=title, min_width=min(longest_word, console.width))
    for name, width in zip(columns, widths, strict=True):
        table.add_column(name, width=width, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _share(least: list[int], most: list[int], room: int, foldable: list[bool]) -> list[int]:
    """Column widths within ``room``: each at least ``least``, the space left shared in
    proportion to what each column would use beyond that. When even ``least`` does not
    fit, the widest ``foldable`` columns give way, one character at a time (only their
    longest words fold)."""
    if sum(most) <= room:
        return most
    spare = room - sum(least)
    widths = list(least)
    while spare < 0:
        narrowable = [i for i, ok in enumerate(foldable) if ok and widths[i] > 8]
        if not narrowable:
            break
        widths[max(narrowable, key=lambda i: widths[i])] -= 1
        spare += 1
    if spare <= 0:
        return widths
    wants = [m - n for n, m in zip(least, most, strict=True)]
    return [n + spare * w // sum(wants) for n, w in zip(least, wants, strict=True)]


@click.group(cls=ImgxferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgxfer")
def cli() -> None:
    """Image transfer learning with generative data augmentation.

    Start with `imgxfer run` (syndigits -> mnist on embedded data), see what is
    installed with `imgxfer plugins` and `imgxfer list`. Commands that plugins add are
    not listed here (listing them would load every plugin): `imgxfer plugins` shows
    them.
    """


@cli.command(short_help="Encode, caption, generate, adapt and evaluate.")
@run_options(config="TOML config; flags given here override it.",
             name="Run name, used in the run folder's name.",
             adapter=f"Transfer method (default {RunConfig.adapter}).",
             out="Folder that receives run folders (default runs).")
@click.option("--compare", help="Several adapters on the same split, e.g. source-only,finetune.")
@click.option("--seeds", help="Run once per seed, e.g. 0,1,2, and report mean ± std.")
@click.option("--compare-synthetic/--no-compare-synthetic", default=None,
              help="Also train each adapter that reads generated images without them and "
                   "report the difference (on by default; off saves that second fit).")
@click.option("--synthetic-filter", type=float, metavar="P",
              help="Keep generated images a source+shots probe gives probability >= P (0: all).")
@click.option("--synthetic-filter-by", metavar="NAME",
              help="What gives that probability: probe (default) or an adapter that scores "
                   "images zero-shot, e.g. clip:PATH (imgxfer-transformers).")
@click.option("--quality/--no-quality", default=None,
              help="Measure the generator (CAS, FID/KID on the test split); on by default.")
@click.option("--generator-budget", "--gan-budget", "generator_budget", metavar="DURATION",
              help="Train the generator for this long, e.g. 3m: sets --generator-time, and "
                   "the step count no longer stops it unless --generator-steps is given "
                   "(--gan-budget is the old name).")
@click.option("--resume", "resume_folder", type=click.Path(), metavar="RUN_FOLDER",
              help="Finish an interrupted run in its folder, with its config.toml; the "
                   "generator continues from its last training checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout at the end.")
def run(config_file: str | None, resume_folder: str | None, as_json: bool,
        **flags: Any) -> None:
    """Run the whole chain: encode, caption, generate, adapt, evaluate, report.

    Each run writes a folder under --out (config.toml, metrics.json, report.html, the
    classifier and, when there is one, the generator; with --seeds one seed-K folder per
    seed and a summary). Options for one stage's plugin go through its
    --STAGE-opt flag; `imgxfer list` shows every plugin and its options.

    \b
    Examples:
      imgxfer run                                   # syndigits -> mnist, 0 labels, GAN
      imgxfer run --target folder:my_images --shots 5 --generator none
      imgxfer run --compare source-only,finetune,dann --seeds 0,1,2
      imgxfer run --source mnist --target mnist-m --shots 0 --synthesis translate
      imgxfer run --encoder resnet18 --encoder-opt pretrained=imagenet --adapter linear
      imgxfer run --config my-run.toml --adapter-steps 300
      imgxfer run --task segment --shots 0 --compare source-only,adabn,advent
      imgxfer run --tracker mlflow                  # also log to MLflow (runs/mlflow.db)
    """
    from imgxfer import tasks
    from imgxfer.core.progress import RichProgress
    from imgxfer.run.execute import execute, resume_config
    from imgxfer.sweep.seeds import run_seeds

    options = {s: list(flags.pop(f"{s}_opt")) for s in STAGES}
    if resume_folder is not None:
        given = [k for k, v in flags.items() if v is not None] + [k for k, v in options.items() if v]
        if config_file or given:
            raise UserError("--resume takes everything from the run folder's config.toml; "
                            "give no other run options with it.")
    seeds = _parse_seeds(flags.pop("seeds"))
    generator_budget = flags.pop("generator_budget")
    config = (resume_config(Path(resume_folder)) if resume_folder is not None else
              _new_config(config_file, flags, options, generator_budget))
    registry = current_registry()
    progress = RichProgress(err)
    _show_warnings_on_screen()
    if seeds is not None:
        many = run_seeds(config, seeds, registry, progress=progress)
        _print_comparison(many.summary, f"target test accuracy over seeds "
                          f"{', '.join(map(str, seeds))} (mean ± std)", over_seeds=True)
        _print_synthetic(many.synthetic_delta, many.generator, over_seeds=True)
        folder, payload = many.folder, many.payload(seeds)
    else:
        # The config has its task's defaults already (for_task with the options given).
        resume = Path(resume_folder) if resume_folder is not None else None
        result = execute(tasks.prepare(config, registry), progress=progress, folder=resume,
                         resume=resume is not None)
        if config.task != "classify":
            return _print_dense(result, config, as_json)
        folder, payload = result.folder, result.metrics.to_json()
        _print_result(result.metrics, config)  # the deltas are in its baselines table
        _print_synthetic(None, payload.get("generator"))
        _print_noise_warnings(result.metrics)
    from imgxfer.core.runfolder import REPORT, seed_folder

    report = folder / REPORT if seeds is None else folder / seed_folder("*") / REPORT
    first = folder if seeds is None else folder / seed_folder(seeds[0])
    _print_where(folder, report, "classify", first, config.adapter_names())
    _print_tracker(config)
    if as_json:
        click.echo(json.dumps(payload, indent=2))


def _new_config(config_file: str | None, flags: dict[str, Any],
                options: dict[str, list[str]], generator_budget: str | None) -> Any:
    """The config of a new run: the file's, the flags over it, the task's defaults where
    neither chose (:meth:`RunConfig.for_task`) and a name that says what it holds."""
    from imgxfer.core import config as cfg

    config = cfg.load(config_file) if config_file else cfg.RunConfig()
    given = {k for k, v in flags.items() if v is not None}
    given |= set(cfg.read_toml(config_file)) if config_file else set()
    config = cfg.apply_overrides(config, flags, options).for_task(given)
    _apply_generator_budget(config, generator_budget, flags, config_file)
    if config.name == cfg.RunConfig.name and not flags.get("name"):
        # The default name follows the pair, so run folders say what they hold.
        config.name = f"{config.source}-to-{config.target}"
    return config


def _print_dense(result: Any, config: Any, as_json: bool) -> None:
    """A dense run's table (one row per adapter), its folder and how to predict with it."""
    from imgxfer.cli.dense import result_rows
    from imgxfer.core.runfolder import REPORT

    metrics, folder = result.metrics, result.folder
    columns, rows = result_rows(metrics)
    err.print(_table(f"target test split: {config.target} ({metrics.data['target']['test']} "
                     "scenes)", columns, rows, err, whole=("adapter",)))
    what = "segment" if metrics.task == "segment" else "detect objects in"
    _print_where(folder, folder / REPORT, what, folder, config.adapter_names())
    _print_tracker(config)
    if as_json:
        click.echo(json.dumps(metrics.to_json(), indent=2))


def _print_where(folder: Path, report: Path, what: str, run: Path, adapters: list[str]) -> None:
    """The run folder, its report, and the predict command for new images."""
    # soft_wrap: paths and commands stay on one line, whole, for copying.
    err.print(f"run folder: [bold]{folder}[/]  (open {report})", highlight=False, soft_wrap=True)
    choose = (f" --adapter {adapters[0]}  (or --adapter {' / '.join(adapters[1:])})"
              if len(adapters) > 1 else "")
    err.print(f"{what} new images: imgxfer predict IMAGES --from {run}{choose}",
              highlight=False, soft_wrap=True)


def _print_tracker(config: Any) -> None:
    """Where --tracker logged the run, as the command that opens it."""
    if config.tracker == "tensorboard":
        logdir = config.tracker_uri or config.out
        err.print(f"logged to TensorBoard: tensorboard --logdir {logdir}", highlight=False,
                  soft_wrap=True)
    elif config.tracker == "mlflow":
        from imgxfer.run.trackers import MLflow, shown_uri

        uri = (shown_uri(config.tracker_uri) if config.tracker_uri
               else MLflow.default_uri(config.out))
        how = (f"open {uri}" if uri.startswith(("http://", "https://")) else
               f"mlflow ui --backend-store-uri {uri}")
        err.print(f"logged to MLflow (experiment {config.name!r}): {how}", highlight=False,
                  soft_wrap=True)


def _apply_generator_budget(config: Any, budget: str | None, flags: dict[str, Any],
                            config_file: str | None) -> None:
    """``--generator-budget 3m``: the generator trains for three minutes
    (``generator_time``), however many steps that is (``generator_steps = 0``: no step
    cap), unless ``--generator-steps`` or the config file caps the steps too."""
    if budget is None:
        return
    from imgxfer.core import config as cfg
    from imgxfer.core.budget import parse_duration

    parse_duration(budget)  # a bad duration is one sentence, before anything is loaded
    if flags.get("generator_time") not in (None, budget):
        raise UserError("--generator-budget and --generator-time both set the generator's "
                        "time; give one of them.")
    config.generator_time = budget
    steps_given = (flags.get("generator_steps") is not None
                   or (config_file is not None and "generator_steps" in cfg.read_toml(config_file)))
    if not steps_given:
        config.generator_steps = 0


class _ScreenWarnings(logging.Handler):
    """Warnings the library logs (into run.log) shown on the screen too, each once, e.g.
    a feature cache that was turned off."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if getattr(record, "screen", True) and message not in self.seen:
            self.seen.add(message)
            err.print(f"[yellow]warning:[/] {message}", highlight=False)


def _show_warnings_on_screen() -> None:
    logger = logging.getLogger("imgxfer")
    if not any(isinstance(h, _ScreenWarnings) for h in logger.handlers):
        logger.addHandler(_ScreenWarnings(logging.WARNING))


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds expects integers separated by commas, got {text!r}.") from None


def _print_result(metrics: RunMetrics, config: Any) -> None:
    from imgxfer.run.uncertainty import accuracy_interval, with_interval

    target = metrics.target
    if len(metrics.adapters) > 1:
        _print_comparison({n: r.to_json() for n, r in metrics.adapters.items()},
                          f"adapters on the same split ({target.n_test} test images)")
    else:
        rows = [[key, f"{getattr(target, key):.4f}"]
                for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "chance")]
        assert target.accuracy is not None  # formatted just above: a run always measures it
        rows[0][1] = with_interval(target.accuracy, accuracy_interval(target))  # 95% Wilson
        if target.unlabelled_im is not None:
            rows.append(["IM (no labels)", f"{target.unlabelled_im:.4f}"])
        err.print(_table(f"target test split: {config.target} ({target.n_test} images)",
                         ["metric", "value"], rows, err, whole=("metric",)))
    _print_baselines(metrics)


def _print_baselines(metrics: RunMetrics) -> None:
    """What the run is judged against, on the same test split: chance, the source model
    (no target image), each adapter without the synthetic images, and the run's own."""
    rows = [["chance (1 / classes)", f"{metrics.target.chance:.4f}", "–"]]
    for name, r in (metrics.baselines or {}).items():
        rows.append([f"{name} (frozen source encoder, logistic head)", f"{r.accuracy:.4f}",
                     f"{r.macro_f1:.4f}"])
    for name, r in metrics.adapters.items():
        delta = (metrics.synthetic_delta or {}).get(name)
        if delta is not None:
            rows.append([f"{name} without synthetic images", f"{delta.without:.4f}",
                         f"{delta.macro_f1_without:.4f}"])
        gain = f" with synthetic images ({delta.delta:+.4f})" if delta is not None else ""
        rows.append([f"{name}{gain}", f"{r.accuracy:.4f}", f"{r.macro_f1:.4f}"])
    err.print(_table("what the run is compared with (target test split)",
                     ["model", "accuracy", "macro F1"], rows, err, whole=("model",)))


def _print_noise_warnings(metrics: RunMetrics) -> None:
    """One line per figure within noise of chance or below its baseline
    (imgxfer.run.uncertainty), as the report says."""
    from imgxfer.run.uncertainty import noise_warnings

    for warning in noise_warnings(metrics):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _print_synthetic(delta: dict[str, Any] | None, generator: dict[str, Any] | None,
                     over_seeds: bool = False) -> None:
    """Generator quality (CAS, FID/KID) and, with --compare-synthetic, the accuracy with
    and without the generated images per adapter."""
    from imgxfer.run.uncertainty import with_interval

    if generator and "cas_mean" in generator:  # over seeds
        err.print(f"generator: CAS {generator['cas_mean']:.4f} ± {generator['cas_std']:.4f} "
                  f"(real {generator['cas_real_mean']:.4f}), FID {generator['fid_mean']:.3f} ± "
                  f"{generator['fid_std']:.3f} (in the encoder's feature space)", highlight=False)
    elif generator and "cas" in generator:
        kept = (f", label kept {generator['label_kept']:.4f}" if "label_kept" in generator
                else "")
        err.print(f"generator: CAS {with_interval(generator['cas'], generator.get('cas_interval'))} "
                  f"(real {with_interval(generator['cas_real'], generator.get('cas_real_interval'))})"
                  f"{kept}, FID {generator['fid']:.3f}, KID {generator['kid_mean']:.4f} "
                  "(in the encoder's feature space)", highlight=False)
    if not delta:
        return
    rows = [[name, _value(r, "with", over_seeds), _value(r, "without", over_seeds),
             _value(r, "delta", over_seeds, sign="+")] for name, r in delta.items()]
    err.print(_table("target test accuracy with and without synthetic images"
                     + (" (mean ± std over seeds)" if over_seeds else ""),
                     ["adapter", "with", "without", "delta"], rows, err, whole=("adapter",)))


def _value(r: dict[str, Any], key: str, over_seeds: bool, sign: str = "") -> str:
    """``r[key]``, or ``r[key_mean] ± r[key_std]`` over seeds; "–" where not measured."""
    value = r.get(key + ("_mean" if over_seeds else ""))
    if value is None:
        return "–"
    return f"{value:{sign}.4f}" + (f" ± {r[key + '_std']:.4f}" if over_seeds else "")


def _print_comparison(rows: dict[str, dict[str, Any]], title: str,
                      over_seeds: bool = False) -> None:
    """Adapters side by side from their metrics (one run's, or the ``_mean``/``_std``
    summary over seeds), with the IM score (no labels; see
    imgxfer.tasks.classify.evaluation.information_maximization) where there were unlabelled images."""
    suffix = "_mean" if over_seeds else ""
    with_im = any(r.get("unlabelled_im" + suffix) is not None for r in rows.values())
    columns = ["adapter", "accuracy", "macro F1"] + (["IM (no labels)"] if with_im else [])
    cells = []
    for name, r in rows.items():
        row = [name, _value(r, "accuracy", over_seeds), _value(r, "macro_f1", over_seeds)]
        if with_im:
            row.append(_value(r, "unlabelled_im", over_seeds))
        cells.append(row + [f"{r['train_seconds' + suffix]:.1f}"])
    err.print(_table(title, columns + ["train s"], cells, err, whole=("adapter",)))
    if with_im:
        err.print("IM (information maximisation, 0 to 1): how confident and class-balanced "
                  "each classifier is on the unlabelled target images, without labels "
                  "(higher is better; it favours confident methods, see docs/benchmarks.md "
                  "for how well it ranks adapters).", highlight=False)


@cli.command(short_help="Show loaded plugins, or the known ones.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--available", is_flag=True, help="Show the plugin directory (registry.toml).")
def plugins(as_json: bool, available: bool) -> None:
    """Show loaded plugins with their components, or the known plugins (--available)."""
    if available:
        from imgxfer.plugin.install import known_plugins

        rows: list[dict[str, Any]] = [
            {"name": p.name, "kinds": p.kinds, "description": p.description,
             "requirement": p.requirement or "(built-in)", "local_path": p.path,
             "installed": p.installed_version()} for p in known_plugins().values()]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        cells = [[r["name"], ", ".join(r["kinds"]), r["installed"] or "no",
                  "built-in" if r["requirement"] == "(built-in)" else f"imgxfer install {r['name']}",
                  escape(r["description"])] for r in rows]
        out.print(_table("known plugins (registry.toml)",
                         ["name", "kinds", "installed", "install with", "description"], cells,
                         out, whole=("name", "installed")))
        return
    from imgxfer.plugin.host import PluginHost

    # Never strict here: this command exists to show what failed.
    env = {k: v for k, v in os.environ.items() if k != "IMGXFER_STRICT_PLUGINS"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = PluginHost(env).load_all()
    infos = [i.as_dict() for i in host.plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    cells = []
    for i in infos:
        comps = "\n".join(f"{k}: {', '.join(v)}" for k, v in i["components"].items()) or "-"
        status = "[green]ok[/]" if i["status"] == "ok" else f"[red]failed[/] {escape(i['error'])}"
        cells.append([escape(i["name"]), i["version"], i["source"], comps, status])
    out.print(_table("imgxfer plugins", ["plugin", "version", "source", "components", "status"],
                     cells, out, whole=("plugin", "version", "source")))


@cli.command("list", short_help="List registered components.")
@click.argument("kind", required=False, metavar="[KIND]",
                type=click.Choice(list(KINDS)))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(kind: str | None, as_json: bool) -> None:
    """List registered components (all kinds, or one KIND: encoders, captioners,
    generators, adapters or datasets) with descriptions and options."""
    registry = current_registry()
    kinds = [kind] if kind else list(registry.components)
    rows: list[dict[str, Any]] = [
        {"kind": k, "name": c.name + ("<...>" if c.is_family else ""), "plugin": c.plugin,
         "tasks": sorted(c.tasks, key=TASKS.index), "description": c.description,
         "options": c.options(), "defaults": c.defaults()}
        for k in kinds for c in sorted(registry.all(k), key=lambda c: (c.name, min(
            map(TASKS.index, c.tasks))))]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=repr))  # a plugin's default may be any object
        return
    # One table per kind: without a kind column, names and option tokens keep their
    # whole width at 80 columns.
    for k in kinds:
        # A component of other tasks than classification says which under its name.
        cells = [[escape(r["name"]) + ("" if r["tasks"] == ["classify"] else
                                       f"\n({','.join(r['tasks'])})"),
                  escape(r["plugin"]), escape(r["description"]),
                  escape(", ".join(_shown_options(r)))] for r in rows if r["kind"] == k]
        out.print(_table(f"registered {k}", ["name", "plugin", "description",
                                              "options (=default)"], cells, out,
                         whole=("name", "plugin")))


def _shown_options(row: dict[str, Any]) -> list[str]:
    """--STAGE-opt KEY=VALUE takes these; the default shows the value's type too. A run
    gives every factory that takes a ``seed`` its own (Registry.build), so the factory's
    default seed is never what a run uses: the table says where it comes from."""
    return ["seed=from --seed" if o == "seed" else
            f"{o}={json.dumps(row['defaults'][o], default=repr)}" if o in row["defaults"]
            else o for o in row["options"]]


@cli.command(short_help="Install a plugin listed in registry.toml.")
@click.argument("name")
@click.option("--upgrade", is_flag=True, help="Upgrade if already installed.")
@click.option("--find-links", "wheels", metavar="DIR",
              help="A folder of built wheels (what `make wheels` or `python -m build` "
                   "writes): install the plugin's newest wheel there; its dependencies may "
                   "come from there too. Default: $IMGXFER_PLUGIN_WHEELS.")
@click.option("--index-url", metavar="URL",
              help="A package index (PEP 503 simple API) to install the plugin from "
                   "instead of pip's own. Default: $IMGXFER_PLUGIN_INDEX.")
def install(name: str, upgrade: bool, wheels: str | None, index_url: str | None) -> None:
    """Install a plugin listed in registry.toml (see `imgxfer plugins --available`)
    with pip, into the Python that runs imgxfer.

    \b
    Where from (the first that applies):
      1. --find-links DIR or $IMGXFER_PLUGIN_WHEELS: the plugin's wheel in DIR;
      2. --index-url URL or $IMGXFER_PLUGIN_INDEX: that package index;
      3. the plugin's folder, when imgxfer runs from a checkout of its repository;
      4. pip's own index (PyPI, unless pip is configured otherwise).

    \b
    Examples:
      imgxfer install timm
      imgxfer install timm --find-links dist     # wheels from `make wheels`
      IMGXFER_PLUGIN_WHEELS=/srv/wheels imgxfer install diffusers
      imgxfer install timm --index-url https://pypi.example.org/simple
    """
    from imgxfer.plugin.install import install as do_install

    with err.status(f"installing plugin {name!r} with pip..."):
        result = do_install(name, upgrade=upgrade, wheels=wheels, index_url=index_url)
    for line in result.summary():
        click.echo(line, err=line.startswith("warning:"))


@cli.command(short_help="Uninstall an installed plugin.")
@click.argument("name")
def uninstall(name: str) -> None:
    """Uninstall the distribution that provides plugin NAME: a name from registry.toml,
    an installed plugin's name as `imgxfer plugins` shows it, or its distribution name.
    Plugins are not loaded for this, so a broken one can always be removed."""
    from imgxfer.plugin.install import uninstall as do_uninstall

    removed = do_uninstall(name)
    eps = removed.entry_points
    click.echo(f"uninstalled {removed.distribution} {removed.version}"
               + (f" (plugin{'s' if len(eps) > 1 else ''} {', '.join(eps)})" if eps else ""))


def main() -> None:
    from imgxfer.core.processes import is_main

    if not is_main():
        # A non-main process of a distributed run (imgxfer.core.distributed): rank 0 speaks
        # for all (--json included); a crash still shows its traceback on stderr.
        out.quiet = err.quiet = True
        sys.stdout = open(os.devnull, "w")
    cli(prog_name="imgxfer")


if __name__ == "__main__":
    main()
