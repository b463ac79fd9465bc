"""The README's manual VOC commands run as written on an offline machine when the two weight files are present
(issue 21: only the first named --backbone_weights, the IRN and PSA commands fell back to 'imagenet' and stopped
on the download). The commands are read from README.md; only sizes are added (a few real VOC images, small
crops, one epoch) and voc12/test.txt is replaced by a list of two of those images. The weight files are random
torchvision-format state dicts made here; the network is cut off."""
import json
import os
import re
import shlex
import urllib.error

import pytest
import torch

import run_sample
from conftest import REPO, train_subset_ids, write_list

SMALL = {  # sizes only: no weight, device-independent or list flag of the README is changed
    "--num_workers": "0", "--device": "cpu",
    "--cam_num_epoches": "1", "--cam_batch_size": "2", "--cam_crop_size": "64", "--cam_resize_long": "64,96",
    "--cam_scales": "0.25", "--rib_iter": "1", "--rib_batch": "1", "--rib_crop_size": "64", "--rib_loss_scales": "0.25",
    "--rib_loader_workers": "0", "--rib_explode_stop": "false", "--check_classifier": "false", "--cam_eval_sweep": "0.1,0.9,0.1",
    "--irn_crop_size": "64", "--irn_batch_size": "2", "--irn_num_epoches": "1", "--sem_seg_pad_to": "0",
    "--psa_crop_size": "72", "--psa_batch_size": "2", "--psa_num_epoches": "1", "--psa_logt": "1",
    "--seg_num_iters": "1", "--seg_batch_size": "1", "--seg_crop_size": "32", "--seg_scales": "1.0",
    "--seg_test_scales": "0.25", "--seg_crf_iters": "1", "--save_cam_png": "0", "--seg_save_png": "0",
}


def readme_commands():
    """The lines of README.md's block that starts with R=...; W=... as argv lists (continuations joined,
    comments dropped)."""
    text = open(os.path.join(REPO, "README.md")).read()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith("R="))
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def save_weights(path, builder):
    """A torchvision-format state dict of a random ResNet whose residual branches are damped (a random
    50/101-layer network with unit BN explodes otherwise)."""
    torch.manual_seed(0)
    model = builder()
    with torch.no_grad():
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in layer:
                block.bn3.weight.mul_(0.1)
    torch.save(model.state_dict(), path)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_readme_voc_commands_run_offline_as_written(tmp_path, voc_root, monkeypatch, offline, caplog):
    from net.resnet50 import resnet50, resnet101
    import importlib.util
    monkeypatch.chdir(tmp_path)  # the README's relative weight paths and work dir
    save_weights("resnet50-19c8e357.pth", resnet50)
    save_weights("resnet101-5d3b4d8f.pth", resnet101)
    ids = train_subset_ids(2)
    lst = write_list(tmp_path / "ids.txt", ids)
    test_list = write_list(tmp_path / "test_ids.txt", ids[:1])
    lists = ["--train_list", lst, "--infer_list", lst, "--eval_list", lst, "--seg_train_list", lst,
             "--seg_infer_list", lst, "--seg_eval_list", lst]
    small = [x for kv in SMALL.items() for x in kv]
    commands = readme_commands()
    assert commands[0].startswith("R=") and len(commands) == 7, commands
    env = dict(part.split("=", 1) for part in commands[0].split(";") for part in [part.strip()])
    env["R"] = voc_root
    ran = []
    for command in commands[1:]:
        for name, value in env.items():
            command = command.replace(f"${name}", value)
        argv = shlex.split(command.replace("voc12/test.txt", test_list))
        assert argv[0] == "python", argv
        if argv[1] == "run_sample.py":
            given = argv[2:]
            # lists: the README's own where it names one (the test list), ours elsewhere
            extra = [x for i in range(0, len(lists), 2) if lists[i] not in given for x in lists[i:i + 2]]
            run_sample.main(given + extra + small)
        else:
            assert argv[1] == "scripts/export_voc_test.py"
            spec = importlib.util.spec_from_file_location("export_voc_test", os.path.join(REPO, argv[1]))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(argv[2:])
        ran.append(argv[1])
    w = env["W"]
    for path in ("sess/res50_cam.pth", "sess/res50_irn.pth", "sess/psa_aff.pth", "sess/deeplab.pth",
                 "sess/deeplab_retrain.pth", "result/eval_sem_seg.json", "result/eval_sem_seg_psa.json",
                 "result/eval_deeplab.json", "voc12_test.tar.gz"):
        assert os.path.isfile(os.path.join(w, path)), path
    # the later commands took the weights recorded by the first ones, and said so
    assert "--backbone_weights resnet50-19c8e357.pth (from the record of" in caplog.text
    for record in ("sess/res50_irn.settings.json", "sess/psa_aff.settings.json"):
        settings = json.load(open(os.path.join(w, record)))["settings"]
        assert settings["backbone_weights"] == "resnet50-19c8e357.pth", (record, settings)
    retrain = json.load(open(os.path.join(w, "sess/deeplab_retrain.settings.json")))["settings"]
    assert retrain["init"] == "resnet101-5d3b4d8f.pth", retrain


def test_a_flag_given_beats_the_recorded_weights(tmp_path):
    from misc import provenance
    args = run_sample.parse_args(["--work_dir", str(tmp_path), "--device", "cpu"])
    provenance.prepare(args, "train_cam", args.cam_weights_path, {"backbone_weights": "/w/r50.pth"}, kind="file")
    run_sample.take_recorded_weights(args)
    assert args.backbone_weights == "/w/r50.pth" and args.seg_backbone_weights == "imagenet"
    given = run_sample.parse_args(["--work_dir", str(tmp_path), "--backbone_weights", "none"])
    run_sample.take_recorded_weights(given)
    assert given.backbone_weights == "none"


def test_plain_run_on_a_multi_gpu_machine_says_what_it_does(monkeypatch):
    from misc import dist
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = run_sample.parse_args(["--device", "cuda"])
    steps = [name for name, _ in run_sample.enabled_steps(args)]
    note = run_sample.multi_gpu_note(args, steps, gpu_count=4)
    assert "one worker per GPU" in note and "train_cam" in note and "train_deeplab" in note
    assert "torchrun --standalone --nproc_per_node 4" in note
    assert run_sample.multi_gpu_note(args, ["make_cam", "rib"], gpu_count=4) is None  # nothing trains
    assert run_sample.multi_gpu_note(args, steps, gpu_count=1) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert run_sample.multi_gpu_note(args, steps, gpu_count=4) is None  # torchrun: DDP
    monkeypatch.delenv("WORLD_SIZE")
    # the per-image steps' devices without torchrun: one worker per visible GPU; training: one process
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert dist.local_devices("cuda", 0) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert dist.init_distributed("cuda") == (0, 1, "cuda")
