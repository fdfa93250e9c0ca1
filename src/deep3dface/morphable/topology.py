"""Mesh topology helpers shared by the fitter and the texture code: edges, Laplacian, mirror map."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges, each (low, high)."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def graph_laplacian(triangles: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Combinatorial Laplacian L = D − A of the mesh graph (N, N), for smoothness priors."""
    edges = mesh_edges(triangles)
    n = num_vertices
    adjacency = sp.coo_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                              shape=(n, n)).tocsr()
    return (sp.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency).tocsr()


def mirror_vertex_map(mean_shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each vertex, the vertex nearest its mirror image across the x = 0 plane.

    Returns (ids (N,) int64, distances (N,) in model units); the model is centred, and faces are
    near-symmetric about x = 0, so large distances flag vertices without a true partner."""
    mirrored = mean_shape * np.array([-1.0, 1.0, 1.0])
    distances, ids = cKDTree(mean_shape).query(mirrored)
    return ids.astype(np.int64), distances
