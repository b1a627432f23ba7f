"""The fast path's tail of new tokens: device-side lengths, buckets, rotation, ragged batches (CPU, no kernels)."""

from __future__ import annotations

import torch

from kvstack.hf.decode_tail import TAIL_BLOCK, DecodeTail
from kvstack.rows.rotate import rotation


def test_appends_land_at_the_device_lengths_and_grow_by_buckets():
    tail = DecodeTail(1, 2, 8, torch.float32, torch.device("cpu"))
    k = torch.randn(1, 2, TAIL_BLOCK + 5, 8)
    v = torch.randn_like(k)
    tail.append(k[:, :, :3], v[:, :, :3])
    buffers = tail.k
    tail.append(k[:, :, 3:4], v[:, :, 3:4])
    assert tail.k is buffers and tail.capacity == TAIL_BLOCK  # same bucket: same address
    tail.append(k[:, :, 4:], v[:, :, 4:])
    assert tail.capacity == 2 * TAIL_BLOCK and tail.table.max_length == tail.capacity  # a new bucket
    assert tail.lengths.tolist() == [TAIL_BLOCK + 5] * 2 and tail.counts == [TAIL_BLOCK + 5]
    got_k, got_v = tail.rows(0)
    assert torch.equal(got_k, k[0]) and torch.equal(got_v, v[0])
    assert tail.nbytes() == 2 * 2 * (TAIL_BLOCK + 5) * 8 * 4


def test_rotated_tail_is_stored_in_the_rotated_basis_and_read_back_unrotated():
    r = rotation(8, 3, torch.float32)
    tail = DecodeTail(1, 2, 8, torch.float32, torch.device("cpu"), key_rot=r, value_rot=None)
    k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    tail.append(k, v)
    stored_k, stored_v = tail.rows(0, basis=True)
    assert torch.allclose(stored_k, k[0] @ r.T, atol=1e-6) and torch.equal(stored_v, v[0])
    assert torch.allclose(tail.rows(0)[0], k[0], atol=1e-5)  # what the generic path reads


def test_a_padded_batch_appends_each_sequence_its_own_tokens():
    tail = DecodeTail(2, 2, 4, torch.float32, torch.device("cpu"))
    k = torch.randn(2, 2, 3, 4)
    tail.append(k, -k, skips=[0, 2])  # the question block: sequence 1 has two padding columns
    assert tail.counts == [3, 1] and tail.lengths.tolist() == [3, 3, 1, 1]
    step = torch.randn(2, 2, 1, 4)
    tail.append(step, -step)  # a decode step: one token each, at each sequence's own length
    assert tail.counts == [4, 2] and tail.lengths.tolist() == [4, 4, 2, 2]
    assert torch.equal(tail.rows(1)[0], torch.cat([k[1, :, 2:], step[1]], dim=1))
    assert torch.equal(tail.rows(0)[1], -torch.cat([k[0], step[0]], dim=1))
    tail.advance(1)  # a replayed graph moved the device lengths; the host follows
    assert tail.counts == [5, 3]
