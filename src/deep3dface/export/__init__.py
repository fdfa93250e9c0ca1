"""Exporters behind a registry: pure functions returning bytes, and one safe way to write them.

``MESH_FORMATS`` maps a file suffix to ``Mesh -> bytes``.  ``write_output`` writes bytes
atomically (a temporary file renamed into place, so a crash leaves no partial file) and refuses
to overwrite an existing file unless asked.  ``TEXTURED_FORMATS`` (``export.textured``) maps a suffix
to ``(TexturedMesh, name) -> {file name: bytes}`` (mesh, material and texture files).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..types import Mesh
from .coefficients import coefficients_to_mat, read_coefficients_mat, to_reference_pixels
from .meshes import mesh_to_glb, mesh_to_obj, mesh_to_ply
from .textured import TEXTURED_FORMATS, TexturedMesh, export_textured, write_textured

MESH_FORMATS: dict[str, Callable[[Mesh], bytes]] = {
    "obj": mesh_to_obj,
    "ply": mesh_to_ply,
    "glb": mesh_to_glb,
}


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not allowed."""


def export_mesh(mesh: Mesh, fmt: str) -> bytes:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"export_mesh needs a Mesh (e.g. FaceReconstruction.mesh()), got {type(mesh).__name__}")
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a format name ({', '.join(MESH_FORMATS)}), got {type(fmt).__name__}")
    try:
        exporter = MESH_FORMATS[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unknown mesh format {fmt!r}; known: {', '.join(MESH_FORMATS)}") from None
    return exporter(mesh)


def _umask() -> int:
    # Linux reports it; elsewhere it can only be read by setting it (briefly, process-wide)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | Path) -> None:
    """Give a file the permissions ``open(path, "w")`` would have (0o666 less the umask): a
    ``tempfile.mkstemp`` file is private (0o600), and renaming it into place would keep that."""
    os.chmod(path, 0o666 & ~_umask())


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    """OutputExistsError where ``path`` exists and overwriting was not allowed (``write_output``'s
    check, for callers that want it before their work)."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")


def refuse_file_above(path: str | Path, option: str = "-o", error: type[Exception] = ValueError) -> None:
    """``error`` (by default a ValueError, a bad argument: the CLI's exit 2) where the nearest
    existing path above ``path`` is not a folder, so nothing can be written there; checked before
    any work (the OS would say only "Not a directory" or "File exists", once the work was done)."""
    path = Path(path)
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise error(f"{option} {path}: {parent} is a file, not a folder")


def write_output(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; an existing file is an error unless ``overwrite``.
    A leading ``~`` is the home folder (Python leaves it to the shell: "~/face.obj" made a folder
    named "~" in the working directory)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the output a file name")
    # an OSError as the OS's own would be (callers handle those), but one that says what is wrong
    refuse_file_above(path, option="output", error=NotADirectoryError)
    refuse_existing(path, overwrite)
    temporary = stage_output(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def stage_output(path: str | Path, data: bytes) -> Path:
    """``data`` in a hidden temporary file beside ``path`` (same folder, so that ``os.replace``
    moves it into place atomically), with the mode a plain ``open`` would give; removed again if
    writing fails (e.g. a full disk: the error then names ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        give_default_mode(temporary)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def our_meshes(folder: str | Path, stem: str) -> list[Path]:
    """``folder/<stem>.<format>`` for every mesh format where that file is a mesh deep3dface wrote
    (``meshes.is_our_mesh``): what a rerun in another format may replace, and nothing else."""
    from .meshes import is_our_mesh

    return [Path(folder) / f"{stem}.{fmt}" for fmt in MESH_FORMATS if is_our_mesh(Path(folder) / f"{stem}.{fmt}")]


def write_mesh(mesh: Mesh, path: str | Path, overwrite: bool = False) -> Path:
    """Export by the path's suffix and write atomically (``write_output`` expands a leading ``~``)."""
    path = Path(path)
    return write_output(path, export_mesh(mesh, path.suffix), overwrite)


__all__ = ["MESH_FORMATS", "TEXTURED_FORMATS", "OutputExistsError", "TexturedMesh", "coefficients_to_mat", "export_mesh",
           "export_textured", "give_default_mode", "our_meshes", "read_coefficients_mat", "refuse_existing", "refuse_file_above", "stage_output", "to_reference_pixels", "write_mesh", "write_output",
           "write_textured"]
