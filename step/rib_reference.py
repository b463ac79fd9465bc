"""The official RIB loop (obtain_RIB_CAM.py's structure), written plainly: the reference that tests/test_rib.py and
scripts/bench_rib.py compare step/rib.py with. Not a step of the pipeline.

Per image, in one process and fp32: reset to theta_0, a fresh optimiser, then for k = 0..: every scale of the
target forwarded (with gradient at the loss scales) and its flip-merged CAM kept, the explosion test on the
scale-1.0 CAM with an .item() sync, the other images of step k loaded in-process (the disjoint list rebuilt by
scanning --train_list for every image, as the official code), the loss, the update, and the official margin test
with another .item(). It draws the same other images as step/rib.py (the same (seed, image, step, slot)
generators), so on the CPU in fp32 both write the same maps, bit for bit.
"""
import numpy as np
import torch
import torch.nn.functional as F

from misc.cams import cam_file, resize_and_sum, write_cam_record
from misc.datasets import build_spec, load_id_list
from misc.fileio import load_image_rgb
from misc.imutils import classification_augment, scale_pyramid
from misc.torchutils import PolyOptimizer, poly_param_groups
from net.resnet50_cam import load_classifier
from net.rib_loss import finetune_loss
from step.rib import RIBConfig, draw_generator, pool_logits, write_background_record


def reference_draw(train_ids, spec, img_id, label, count, disjoint_prob, rng):
    """The official sampler, rebuilt for every image by scanning the list (same draws as step.rib's index)."""
    present = label > 0
    disjoint = np.array([n for n, i in enumerate(train_ids) if not np.any((spec.label(i) > 0) & present)],
                        dtype=np.int64)
    others = np.array([n for n, i in enumerate(train_ids) if i != img_id], dtype=np.int64)
    from_disjoint = rng.random(count) < disjoint_prob
    if len(disjoint) == 0:
        from_disjoint[:] = False
    out = np.empty(count, np.int64)
    n_d = int(from_disjoint.sum())
    out[from_disjoint] = rng.choice(disjoint, n_d, replace=n_d > len(disjoint)) if n_d else []
    if count - n_d:
        out[~from_disjoint] = others[rng.choice(len(others), count - n_d, replace=count - n_d > len(others))]
    return out


def reference_rib(args, ids):
    """Per image: reset, fresh optimiser, K steps in the official order with .item() syncs, fp32, in-process."""
    cfg = RIBConfig.from_args(args)
    spec = build_spec(args)
    device = args.device
    model = load_classifier(args.cam_weights_path, spec.num_classes, device)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    train_ids = load_id_list(args.train_list, "--train_list")
    for img_id in ids:
        img = load_image_rgb(spec.image_path(img_id))
        label_np = spec.label_or_background(img_id)
        if not label_np.any():
            write_background_record(cam_file(args.rib_out_dir, img_id), img.shape[:2])
            continue
        model.load_state_dict(theta0)
        label = torch.from_numpy(label_np).to(device)
        keys = torch.nonzero(label > 0).flatten()
        pyramid = [torch.from_numpy(p).to(device) for p in scale_pyramid(img, cfg.forward_scales)]
        backbone, head = model.trainable_parameter_groups()
        optimizer = PolyOptimizer(poly_param_groups(backbone, head, cfg.lr, cfg.weight_decay), cfg.lr,
                                  cfg.weight_decay, cfg.iters, cfg.momentum, cfg.official_momentum_bug)
        sums = {s: None for s in cfg.cam_scales}
        for k in range(cfg.last_cam_index + 1):
            train = k < cfg.iters
            step_maps, logits, labels, exploded = {}, [], [], False
            for s, x in zip(cfg.forward_scales, pyramid):
                with torch.set_grad_enabled(train and s in cfg.loss_scales):
                    cam = model.class_maps(x)
                merged = F.relu(cam[0].detach()) + F.relu(cam[1].detach()).flip(-1)
                if s in cfg.cam_scales:
                    step_maps[s] = merged
                if cfg.explode_stop and k >= 1 and s == 1.0:
                    maps = merged[keys]
                    norm = maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-5)
                    exploded = (norm > cfg.explode_th).any(0).float().mean().item() > cfg.explode_ratio
                if train and s in cfg.loss_scales:
                    logits.append(pool_logits(cam, label.expand(2, -1), cfg))
                    labels.append(label.expand(2, -1))
            if exploded:
                if cfg.aggregate == "official" and 1.0 in cfg.cam_scales:  # added before the official test
                    sums[1.0] = sums[1.0] + step_maps[1.0]
                break
            for s in cfg.cam_scales:
                sums[s] = step_maps[s] if sums[s] is None else sums[s] + step_maps[s]
            if not train:
                break
            target_sum = (torch.cat(logits).detach() * label).sum().item()
            picks = reference_draw(train_ids, spec, img_id, label_np, args.rib_batch, args.rib_disjoint_prob,
                                   draw_generator(args.seed, img_id, k, -1))
            if len(picks):
                others = np.stack([classification_augment(load_image_rgb(spec.image_path(train_ids[p])),
                                                          args.rib_crop_size,
                                                          draw_generator(args.seed, img_id, k, slot),
                                                          tuple(int(v) for v in args.cam_resize_long))
                                   for slot, p in enumerate(picks)])
                other_labels = torch.from_numpy(np.stack([spec.label(train_ids[p]) > 0 for p in picks])
                                                .astype(np.float32)).to(device)
                logits.append(pool_logits(model.class_maps(torch.from_numpy(others).to(device)), other_labels,
                                          cfg))
                labels.append(other_labels)
            loss = finetune_loss(torch.cat(logits), torch.cat(labels), cfg.loss, cfg.margin, cfg.margin_mode)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if cfg.margin_mode == "official" and cfg.loss == "rib" and abs(target_sum) > cfg.margin:
                break
        strided, high_res = resize_and_sum([sums[s] for s in cfg.cam_scales], img.shape[:2])
        write_cam_record(cam_file(args.rib_out_dir, img_id), strided, high_res, label.cpu())
