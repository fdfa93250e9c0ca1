"""Process-wide state: torch_threads (scoped thread counts, nested and from several threads at
once) and the per-object caches of what is derived from a model."""
from __future__ import annotations

import threading

import pytest
import torch

from deep3dface.threads import torch_threads


def _overlap(first_out_is_main: bool) -> dict[str, int]:
    """Two scopes of torch_threads(1) in two threads, overlapping: the first in leaves first.
    Returns each thread's count after its own scope and the main thread's at the end."""
    first_in, second_in, first_out, counts = threading.Event(), threading.Event(), threading.Event(), {}

    def first():
        torch.get_num_threads()  # a worker that has read its count before (a pool's thread)
        with torch_threads(1):
            first_in.set()
            second_in.wait(5)
        counts["first"] = torch.get_num_threads()
        first_out.set()

    def second():
        torch.get_num_threads()
        first_in.wait(5)
        with torch_threads(1):
            second_in.set()
            first_out.wait(5)
        counts["second"] = torch.get_num_threads()

    worker = threading.Thread(target=second if first_out_is_main else first)
    other = None if first_out_is_main else threading.Thread(target=second)
    for t in (worker, other):
        if t is not None:
            t.start()
    if first_out_is_main:
        first()
    for t in (worker, other):
        if t is not None:
            t.join(10)
    counts["main"] = torch.get_num_threads()
    return counts


@pytest.mark.parametrize("first_out_is_main", [False, True], ids=["two-workers", "main-and-a-worker"])
def test_overlapping_scopes_of_two_threads_leave_every_thread_its_count(first_out_is_main):
    """OpenMP's count is per thread, and a thread's first read copies the last count set by any
    thread: the second scope in saved 1 (the first's) and restored it, leaving its thread at 1 ever
    after (the networks then ran single-threaded). Now every thread ends where it began."""
    torch.set_num_threads(2)
    try:
        assert _overlap(first_out_is_main) == {"first": 2, "second": 2, "main": 2}
    finally:
        torch.set_num_threads(2)


def test_nested_scopes_restore_their_outer_count():
    before = torch.get_num_threads()
    with torch_threads(2):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_a_scope_works_as_a_decorator():
    @torch_threads(1)
    def count():
        return torch.get_num_threads()

    before = torch.get_num_threads()
    assert count() == 1 and count() == 1 and torch.get_num_threads() == before


def test_per_object_caches_free_their_objects_and_keep_the_last_arguments():
    """Results derived from a model stay while the model lives and go with it (lru_cache kept the
    last four models alive); each object keeps its last ``maxsize`` argument tuples."""
    import gc
    import weakref

    from deep3dface.caching import per_object

    calls = []

    class Model:  # stands for a MorphableModel or ModelData: hashed by identity, weakly referable
        pass

    @per_object(maxsize=2)
    def derived(model, size):
        calls.append(size)
        return [size]

    model = Model()
    first = derived(model, 1)
    assert derived(model, 1) is first and calls == [1]
    derived(model, 2), derived(model, 3)  # 1 is the oldest: dropped
    derived(model, 1)
    assert calls == [1, 2, 3, 1]
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_a_dropped_default_model_is_freed_after_a_fit(faces):
    """A Reconstructor's model, once dropped, is not kept by the fitter's caches."""
    import gc
    import weakref

    from deep3dface.io.images import read_image
    from deep3dface.pipeline import Reconstructor, ReconstructorConfig
    from deep3dface.fit.fitter import FitConfig

    recon = Reconstructor(config=ReconstructorConfig(fit=FitConfig(appearance=None)))
    photo = read_image(faces / "identity_openface_cmu" / "clapton-1.jpg")
    face = recon.reconstruct(photo)[0]
    assert face.uv_chart(face.model) is not None
    model = weakref.ref(recon.model)
    del recon, face
    gc.collect()
    assert model() is None
