"""Pixel pairs within a radius, inter-pixel affinity labels and the random walk of IRN (Ahn et al., CVPR 2019).

IRN relates every pixel to the pixels within `radius` of it on the stride-4 grid. Each pair is stored once (the
destination lies in the lower half-plane: dy > 0, or dy == 0 and dx > 0). The affinity of a pair is
1 - (max of the class-boundary map along the straight path between the two pixels), both ends included (IRN
Eq. 3). The same pairs serve three purposes:
- training labels (`affinity_labels`): a pair is positive when both ends carry the same label, negative when
  the labels differ, ignored when either end is 255;
- the training loss (`edge_to_affinity` on the predicted boundary, in net/resnet50_irn.py);
- the random walk that spreads CAM scores inside boundaries (`propagate_to_edge`).

Random walk. T is the column-normalised aff**beta over all pairs (self-affinity 1) and the CAM x spreads as
x @ T**(2**exp_times). IRN builds T as a dense (hw)^2 matrix and squares it exp_times times, about 0.55 GB per copy
for a 500x375 image (several copies are alive at once). `random_walk_lean` computes the same product as
2**exp_times products with the sparse T, stored as a stencil (69 neighbours per pixel at radius 5), so its memory
grows linearly with the image. `random_walk_dense` keeps the official construction as the reference.
"""

import numpy as np
import torch
import torch.nn.functional as F


def search_directions(radius):
    """Destination offsets (dy, dx) of a source pixel: all offsets with dy^2 + dx^2 < radius^2 in the half-plane
    dy > 0 or (dy == 0, dx > 0). The order (same row first, then row by row, left to right) is IRN's."""
    dirs = [(0, dx) for dx in range(1, radius)]
    dirs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
             if dx * dx + dy * dy < radius ** 2]
    return dirs


def path_offsets(direction):
    """Offsets of the pixels on the path from (0, 0) to `direction`: the grid points inside the bounding box of the
    two ends whose distance to the line through them is below 1. The destination comes first (it has the largest
    |dy| + |dx|), which is how the destination is recovered from a path."""
    dy, dx = direction
    length_sq = dy * dy + dx * dx
    points = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / length_sq < 1:  # squared distance of (y, x) to the line
                points.append((y, x))
    points.sort(key=lambda p: -abs(p[0]) - abs(p[1]))  # stable: ties keep the scan order
    return points


class PathIndex:
    """Pixel pairs within `radius` on a grid of `size` (h, w), grouped by path length (IRN's PathIndex).

    Sources are the pixels whose every destination stays inside the grid: rows [0, h - rf), columns
    [rf, w - rf), with rf = radius - 1 (the official layout; pixels in the left/right/bottom band appear only as
    destinations). Attributes:
      search_paths   list over path lengths of int arrays (n_dirs_L, L, 2): the path offsets of each direction
      search_dst     int array (n_dirs, 2): the destination offsets, in the order of the concatenated groups
      path_indices   list over path lengths of int64 arrays (n_dirs_L, L, n_src): flat grid indices on each path
      src_indices    int64 (n_src,) flat indices of the sources
      dst_indices    int64 (n_dirs, n_src) flat indices of the destinations
    """

    def __init__(self, radius, size):
        if radius != int(radius) or radius < 2:
            raise ValueError(f"radius must be an integer >= 2, got {radius}")
        self.radius = int(radius)
        self.radius_floor = self.radius - 1
        self.size = tuple(int(s) for s in size)
        groups = {}
        for direction in search_directions(self.radius):
            path = path_offsets(direction)
            groups.setdefault(len(path), []).append(path)
        self.search_paths = [np.asarray(groups[length], dtype=np.int64) for length in sorted(groups)]
        self.search_dst = np.concatenate([p[:, 0] for p in self.search_paths], axis=0)
        self.path_indices, self.src_indices, self.dst_indices = self._indices(self.size)

    def _indices(self, size):
        h, w = size
        rf = self.radius_floor
        src_h, src_w = h - rf, w - 2 * rf
        if src_h < 1 or src_w < 1:
            raise ValueError(f"grid {h}x{w} is too small for radius {self.radius}: it needs at least "
                             f"{rf + 1} rows and {2 * rf + 1} columns")
        flat = np.arange(h * w, dtype=np.int64).reshape(h, w)
        path_indices = []
        for paths in self.search_paths:
            # (n_dirs_L, L, n_src): for each path pixel, the flat index of source + offset for every source
            idx = np.empty(paths.shape[:2] + (src_h * src_w,), dtype=np.int64)
            for i, path in enumerate(paths):
                for j, (oy, ox) in enumerate(path):
                    idx[i, j] = flat[oy:oy + src_h, rf + ox:rf + ox + src_w].reshape(-1)
            path_indices.append(idx)
        src_indices = flat[:src_h, rf:rf + src_w].reshape(-1)
        dst_indices = np.concatenate([p[:, 0] for p in path_indices], axis=0)
        return path_indices, src_indices, dst_indices

    @property
    def num_directions(self):
        return len(self.search_dst)


def grid_size_for(radius, size):
    """The smallest grid >= `size` on which PathIndex(radius) has sources: small training crops (e.g. 64 -> 16x16
    at radius 10) are padded on the right / bottom with ignored labels. For 512 crops nothing changes."""
    rf = int(radius) - 1
    return max(size[0], rf + 1), max(size[1], 2 * rf + 1)


def affinity_labels(label, src_indices, dst_indices, num_classes):
    """Affinity labels of one stride-4 label map (h, w) with 0 = background, 1..C classes, anything else ignored.

    Returns float32 arrays (n_dirs, n_src): bg_pos (both ends background), fg_pos (both ends the same class),
    neg (both valid, different labels). Pairs with an ignored end are in none of them.
    """
    flat = np.asarray(label).reshape(-1).astype(np.int64)
    src = flat[src_indices][None, :]
    dst = flat[dst_indices]
    valid = (src <= num_classes) & (dst <= num_classes) & (src >= 0) & (dst >= 0)
    same = src == dst
    pos = same & valid
    bg_pos = pos & (src == 0)
    fg_pos = pos & (src > 0)
    neg = ~same & valid
    return bg_pos.astype(np.float32), fg_pos.astype(np.float32), neg.astype(np.float32)


def edge_to_affinity(edge, path_indices):
    """Boundary probabilities (B, h*w) -> affinities (B, n_dirs, n_src): 1 - max of the boundary along each path.

    `path_indices` are PathIndex.path_indices as tensors on edge's device."""
    affinities = []
    for idx in path_indices:
        n_dirs, length, n_src = idx.shape
        on_path = edge.index_select(1, idx.reshape(-1)).view(edge.shape[0], n_dirs, length, n_src)
        affinities.append(1 - on_path.amax(dim=2))
    return torch.cat(affinities, dim=1)


# --- random walk ------------------------------------------------------------------------------------------------


def to_transition_matrix(affinity, beta, exp_times):
    """Dense: T = column-normalised affinity**beta, squared exp_times times (T**(2**exp_times)), as IRN."""
    scaled = affinity.pow(beta)
    trans = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return trans


def dense_affinity(edge, radius):
    """The official dense (h*w, h*w) affinity of a boundary map (h, w): the map is padded with boundary 1 (left and
    right by radius, bottom by radius) so that every pixel is a source, the pairs are written into a dense matrix
    of the padded grid with 1 on the diagonal, and the padding is cropped away again."""
    h, w = edge.shape
    ver, hor = h + radius, w + 2 * radius
    index = PathIndex(radius, (ver, hor))
    padded = F.pad(edge[None], (radius, radius, 0, radius), mode="constant", value=1.0)
    paths = [torch.from_numpy(p).to(edge.device) for p in index.path_indices]
    aff = edge_to_affinity(padded.reshape(1, -1), paths).reshape(-1)
    n = ver * hor
    src = torch.from_numpy(index.src_indices).to(edge.device).repeat(index.num_directions)
    dst = torch.from_numpy(index.dst_indices).to(edge.device).reshape(-1)
    diag = torch.arange(n, device=edge.device)
    indices = torch.cat([torch.stack([src, dst]), torch.stack([diag, diag]), torch.stack([dst, src])], dim=1)
    values = torch.cat([aff, torch.ones(n, device=edge.device, dtype=aff.dtype), aff])
    dense = torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).to_dense()
    dense = dense.view(ver, hor, ver, hor)[:-radius, radius:-radius, :-radius, radius:-radius]
    return dense.reshape(h * w, h * w)


def shift(t, dy, dx):
    """s[..., y, x] = t[..., y - dy, x - dx], zero where that falls outside (a grid translation by (dy, dx))."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (abs(dx), abs(dx), abs(dy), abs(dy)))
    return padded[..., abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def affinity_stencil(edge, radius):
    """The affinities of `dense_affinity` as a stencil on the h x w grid, without any (h*w)^2 matrix.

    Returns (offsets, aff): offsets is a list of K = 1 + 2 * num_pairs(radius) grid offsets (0, 0), the search
    directions d, then their negatives -d; aff (K, h, w) holds aff[k, y, x] = A[(y, x), (y, x) + offsets[k]],
    0 where the neighbour is outside the image. A pair inside the image has its whole path inside (the path
    stays in the bounding box of its ends), so the padded pixels (boundary 1, as in the official code) only
    zero the pairs that `dense_affinity` crops away.
    """
    h, w = edge.shape
    rf = int(radius) - 1
    padded = F.pad(edge[None], (rf, rf, 0, rf), mode="constant", value=1.0)[0]
    directions = search_directions(int(radius))
    forward = []
    for direction in directions:
        path_max = None
        for oy, ox in path_offsets(direction):
            window = padded[oy:oy + h, rf + ox:rf + ox + w]
            path_max = window if path_max is None else torch.maximum(path_max, window)
        # the destination is on the path: outside the image it reads boundary 1, so the affinity is 0 there
        forward.append(1 - path_max)
    forward = torch.stack(forward)
    # A is symmetric: A[q, q - d] = A[q - d, q], the forward value of source q - d moved to q
    backward = torch.stack([shift(f, dy, dx) for f, (dy, dx) in zip(forward, directions)])
    offsets = [(0, 0)] + directions + [(-dy, -dx) for dy, dx in directions]
    aff = torch.cat([torch.ones_like(edge)[None], forward, backward])
    return offsets, aff


def stencil_to_dense(offsets, aff):
    """(h*w, h*w) matrix of a stencil (tests and checks only: this is the matrix the lean walk avoids)."""
    k, h, w = aff.shape
    flat = torch.arange(h * w, device=aff.device).view(h, w)
    dense = torch.zeros(h * w, h * w, dtype=aff.dtype, device=aff.device)
    for (dy, dx), values in zip(offsets, aff):
        y0, y1 = max(0, -dy), h - max(0, dy)
        x0, x1 = max(0, -dx), w - max(0, dx)
        if y1 <= y0 or x1 <= x0:
            continue
        rows = flat[y0:y1, x0:x1].reshape(-1)
        cols = flat[y0 + dy:y1 + dy, x0 + dx:x1 + dx].reshape(-1)
        dense[rows, cols] = values[y0:y1, x0:x1].reshape(-1)
    return dense


def random_walk_dense(x, edge, radius=5, beta=10.0, exp_times=8):
    """IRN's propagate_to_edge: x (C, h, w) CAM, edge (h, w) boundary in [0, 1] -> (C, 1, h, w).

    Memory ~ 4 dense (h*w)^2 float matrices; the reference for `random_walk_lean`."""
    c, h, w = x.shape
    trans = to_transition_matrix(dense_affinity(edge, radius), beta, exp_times)
    seeds = (x * (1 - edge)).reshape(c, h * w)
    return (seeds @ trans).view(c, 1, h, w)


def random_walk_lean(x, edge, radius=5, beta=10.0, exp_times=8, dtype=torch.float64):
    """Same result as `random_walk_dense` without a dense matrix: x @ T**(2**k) as 2**k stencil products.

    T = A D^-1 (A the symmetric aff**beta, D its column sums), so x T^n is n times y <- D^-1 A y on the grid:
    y_new[p] = sum_k A[p, p + o_k] / s_p * y[p + o_k] over the K = 69 offsets (radius 5). Memory is K grids;
    time 2**k * K multiply-adds per pixel and class. Accumulated in float64 (cheap at this size): 256 float32
    steps would drift by ~1e-4, more than the dense float32 squaring (~3e-5).
    """
    c, h, w = x.shape
    out_dtype = x.dtype
    x, edge = x.to(dtype), edge.to(dtype)
    offsets, aff = affinity_stencil(edge, radius)
    weights = aff.pow(beta)
    weights = weights / weights.sum(dim=0, keepdim=True)  # row sums of A = its column sums
    walk = stencil_walk(x * (1 - edge), offsets, weights, radius, 2 ** exp_times)
    return walk.to(out_dtype).view(c, 1, h, w)


def stencil_walk(y, offsets, weights, radius, steps):
    """`steps` times y <- sum_k weights[k] * (y shifted by offsets[k], zero outside the grid), for y (C, h, w):
    y @ T**steps without the dense matrix, T the transition whose rows are the stencil `weights` (K, h, w).
    Shared by IRN's and PSA's lean walks. One zero-bordered grid and two output grids are allocated once and
    reused by every step (the same sums in the same order as padding a fresh copy each step); y is not changed."""
    h, w = y.shape[-2:]
    rf = int(radius) - 1
    padded = y.new_zeros(y.shape[:-2] + (h + 2 * rf, w + 2 * rf))
    inner = padded[..., rf:rf + h, rf:rf + w]
    shifted = [padded[..., rf + dy:rf + dy + h, rf + dx:rf + dx + w] for dy, dx in offsets]
    grids = (torch.empty_like(y), torch.empty_like(y))
    for step in range(steps):
        nxt = grids[step % 2]
        inner.copy_(y)
        nxt.zero_()
        for view, wk in zip(shifted, weights):
            nxt.addcmul_(view, wk)
        y = nxt
    return y


def propagate_to_edge(x, edge, radius=5, beta=10.0, exp_times=8, lean=True):
    """Random walk of the CAM x (C, h, w) on the boundary map edge (h, w); lean=False runs the official dense
    algorithm (same labels, ~2 GB for a 500x375 image)."""
    walk = random_walk_lean if lean else random_walk_dense
    return walk(x, edge, radius, beta, exp_times)


def num_pairs(radius):
    """Directions per pixel (pairs are stored once): 34 at radius 5, 152 at radius 10."""
    return len(search_directions(int(radius)))


def dense_bytes(h, w, dtype_bytes=4):
    """Size of one dense (h*w)^2 matrix: the unit of the official random walk's memory."""
    return (h * w) ** 2 * dtype_bytes
