"""packaging/rpm/sockpool.spec, expanded by rpmspec, installs exactly what the wheel and units do.

Debian's `rpm` package has rpmspec but none of Fedora's macro packages, so the Fedora macros
the spec uses are defined here: paths as Fedora sets them, and the build/scriptlet macros as
markers that carry their arguments into the expanded text. The wheel is built the way pybuild
builds it (the distro python3's `build` module, no isolation), from a copy of the tree.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "rpm" / "sockpool.spec"
DISTRO_PYTHON = "/usr/bin/python3"
UNITDIR = "/usr/lib/systemd/system"
CATALOGDIR = "/usr/lib/systemd/catalog"
BINDIR = "/usr/bin"
MANDIR = "/usr/share/man"
SITELIB = "/usr/lib/python3.12/site-packages"

# Fedora's values (systemd-rpm-macros, python-rpm-macros, pyproject-rpm-macros).
FEDORA_MACROS = {
    "_unitdir": UNITDIR,
    "_journalcatalogdir": CATALOGDIR,
    "_bindir": BINDIR,
    "_mandir": MANDIR,
    "python3_sitelib": SITELIB,
    "pyproject_files": "PYPROJECT_FILES",
    "pyproject_buildrequires(x:)": "PYPROJECT_BUILDREQUIRES %**",
    "pyproject_wheel": "PYPROJECT_WHEEL",
    "pyproject_install": "PYPROJECT_INSTALL",
    "pyproject_save_files(lL)": "PYPROJECT_SAVE_FILES %*",
    "pytest": "PYTEST",
    "systemd_post()": "SYSTEMD_POST %*",
    "systemd_preun()": "SYSTEMD_PREUN %*",
    "systemd_postun()": "SYSTEMD_POSTUN %*",
    "systemd_postun_with_restart()": "SYSTEMD_POSTUN_WITH_RESTART %*",
}
SECTIONS = re.compile(
    r"^%(description|prep|generate_buildrequires|build|install|check|pre|post|preun|postun"
    r"|files|changelog)\b(.*)$"
)


def _missing_tools() -> str | None:
    if shutil.which("rpmspec") is None:
        return "needs rpmspec (scripts/ensure-deps deb)"
    probe = subprocess.run([DISTRO_PYTHON, "-c", "import build, setuptools, wheel"], check=False)
    if probe.returncode != 0:
        return "needs python3-build, python3-setuptools, python3-wheel (scripts/ensure-deps deb)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


def expand_spec(spec: Path = SPEC) -> str:
    defines: list[str] = []
    for name, body in FEDORA_MACROS.items():
        defines += ["--define", f"{name} {body}"]
    return subprocess.run(
        ["rpmspec", "-P", str(spec), *defines],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def split_sections(text: str) -> dict[str, list[str]]:
    """Section name -> its non-blank, non-comment lines ('files' includes its -f argument)."""
    sections: dict[str, list[str]] = {"preamble": []}
    current = "preamble"
    for line in text.splitlines():
        header = SECTIONS.match(line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
            if header.group(2).strip():
                sections[current].append(header.group(2).strip())
        elif line.strip() and not line.lstrip().startswith("#"):
            sections[current].append(line.strip())
    return sections


def markers(lines: list[str], marker: str) -> list[list[str]]:
    return [line.split()[1:] for line in lines if line.split()[0] == marker]


@pytest.fixture(scope="module")
def spec() -> dict[str, list[str]]:
    return split_sections(expand_spec())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "service", src / "service", ignore=shutil.ignore_patterns("*.egg-info"))
    if (REPO / "README.md").exists():
        shutil.copy(REPO / "README.md", src)
    # Debian 12's setuptools needs the Debian package's patches, as in pybuild's build.
    for name in (REPO / "packaging/debian/patches/series").read_text().split():
        patch = REPO / "packaging/debian/patches" / name
        subprocess.run(["patch", "-s", "-p1", "-d", str(src), "-i", str(patch)], check=True)
    out = tmp_path_factory.mktemp("wheel")
    build = [DISTRO_PYTHON, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
    subprocess.run(
        [*build, "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def wheel_metadata(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def test_name_and_version_match_pyproject(spec: dict[str, list[str]]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    preamble = dict(
        line.split(":", 1) for line in spec["preamble"] if re.match(r"^[A-Za-z]+:", line)
    )
    assert preamble["Name"].strip() == project["name"]
    assert preamble["Version"].strip() == project["version"]
    assert preamble["BuildArch"].strip() == "noarch"
    assert preamble["License"].strip() == project["license"]


def test_builds_tests_and_installs_with_pyproject_macros(spec: dict[str, list[str]]) -> None:
    assert ["PYPROJECT_BUILDREQUIRES", "-x", "test"] in [line.split() for line in spec["prep"]] + [
        line.split() for line in spec.get("generate_buildrequires", [])
    ]
    assert spec["build"] == ["PYPROJECT_WHEEL"]
    assert "PYPROJECT_INSTALL" in spec["install"]
    assert markers(spec["check"], "PYTEST") == [["tests/unit"]]


def test_save_files_covers_every_top_level_module_of_the_wheel(
    spec: dict[str, list[str]], wheel: zipfile.ZipFile
) -> None:
    (saved,) = markers(spec["install"], "PYPROJECT_SAVE_FILES")
    top_level = {
        name.split("/")[0].removesuffix(".py")
        for name in wheel.namelist()
        if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert {arg for arg in saved if not arg.startswith("-")} == top_level
    # %files takes the list of module files that %pyproject_save_files wrote.
    assert spec["files"][0] == "-f PYPROJECT_FILES"


def test_files_are_what_the_wheel_and_units_install(
    spec: dict[str, list[str]], wheel: zipfile.ZipFile
) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel_metadata(wheel, "entry_points.txt"))
    scripts = {f"{BINDIR}/{name}" for name in entry_points["console_scripts"]}
    data_scripts = {
        f"{BINDIR}/{n.rsplit('/', 1)[1]}" for n in wheel.namelist() if ".data/scripts/" in n
    }
    units = {f"{UNITDIR}/{unit.name}" for unit in (REPO / "units").iterdir() if unit.is_file()}
    expected = (
        scripts
        | data_scripts
        | units
        | {f"{CATALOGDIR}/sockpool.catalog", f"{MANDIR}/man1/sockpool.1*"}
    )
    listed = {
        line
        for line in spec["files"][1:]
        if not line.startswith(("%doc", "%license", "%dir", "%config"))
    }
    assert listed == expected
    assert units, "no units found in units/"


def test_install_puts_each_listed_file_from_the_tree(spec: dict[str, list[str]]) -> None:
    installed: dict[str, str] = {}
    for line in spec["install"]:
        words = line.split()
        if words[0] == "install":
            source, dest = words[-2], words[-1]
            assert (REPO / source).is_file(), f"%install copies {source}, not in the tree"
            dest = re.sub(r"^.*/BUILDROOT/[^/]+", "", dest)
            installed[dest] = source
    listed_non_python = {
        line.removesuffix("*")
        for line in spec["files"][1:]
        if not line.startswith("%") and not line.startswith(BINDIR)
    }
    assert set(installed) == listed_non_python
    for unit in (REPO / "units").iterdir():
        assert installed[f"{UNITDIR}/{unit.name}"] == f"units/{unit.name}"
    for doc in (line.split()[1:] for line in spec["files"] if line.startswith("%doc")):
        for name in doc:
            assert (REPO / name).exists(), f"%doc {name} is not in the tree"


def test_scriptlets_restart_the_service_never_the_socket(spec: dict[str, list[str]]) -> None:
    socket, service = "sockpool-echo.socket", "sockpool-echo.service"
    (post,) = markers(spec["post"], "SYSTEMD_POST")
    (preun,) = markers(spec["preun"], "SYSTEMD_PREUN")
    assert set(post) == set(preun) == {socket, service}
    assert markers(spec["postun"], "SYSTEMD_POSTUN_WITH_RESTART") == [[service]]
    assert markers(spec["postun"], "SYSTEMD_POSTUN") == [[socket]]


def test_expansion_sees_a_broken_spec(tmp_path: Path) -> None:
    # The checks above read rpmspec's output: make sure a wrong scriptlet shows up in it.
    broken = tmp_path / "broken.spec"
    broken.write_text(
        SPEC.read_text().replace(
            "%systemd_postun sockpool-echo.socket",
            "%systemd_postun_with_restart sockpool-echo.socket",
        )
    )
    sections = split_sections(expand_spec(broken))
    assert markers(sections["postun"], "SYSTEMD_POSTUN_WITH_RESTART") == [
        ["sockpool-echo.service"],
        ["sockpool-echo.socket"],
    ]
