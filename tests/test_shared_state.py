"""Process-wide state: torch_threads (scoped thread counts, nested and from several threads at
once) and the per-object caches of what is derived from a model.

The overlap test comes first on purpose: once the main thread has set counts in scopes of its
own, libgomp's shared count no longer showed the old code's fault in that process."""
from __future__ import annotations

import threading

import torch

from deep3dface.threads import torch_threads


def test_overlapping_scopes_of_two_threads_give_the_process_its_count_back():
    """Thread A enters (saves N, sets 1), B enters (saved 1), A leaves (restored N), B leaves and
    restored 1: the process ran at 1 thread ever after. Now the last scope out restores N."""
    torch.set_num_threads(2)  # (set before any read: libgomp's threads outside a team share one count)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def first():
            with torch_threads(1):
                a_in.set()
                b_in.wait(5)
            a_out.set()

        def second():
            a_in.wait(5)
            with torch_threads(1):
                b_in.set()
                a_out.wait(5)

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert a_out.is_set() and torch.get_num_threads() == 2
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
