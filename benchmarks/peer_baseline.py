# VERBATIM COPY of ../shared/gpu/peer_baseline.py (the peers' baseline script, kept outside this repository by
# the team), committed here because the GPU machine receives only the repository. Do not edit below the line;
# refresh it with:  python3 benchmarks/gpu_check.py --refresh-peer-copy ../shared/gpu/peer_baseline.py
# ------------------------------------------------------------------------------------------------------------
"""Peer baseline for ResNeXt101-32x4d on one GPU, to run in the SAME device call as the project's own
benchmark so that the two are compared side by side on one card.

Measures: the card's ceilings (bf16 matmul, device copy), timm / torchvision training and inference
throughput on synthetic data, a CPU PIL loader and GPU nvJPEG decode on ImageNet-like JPEGs.

  python3 peer_baseline.py [--quick] [--sections ceilings,train,infer,data,compile]

--quick runs tiny sizes (for a CPU dry run). Writes $OUT/peer_baseline.json (or /tmp/out)."""
import io, json, os, sys, time, glob
import torch, torch.nn as nn, torch.nn.functional as F

QUICK = "--quick" in sys.argv
SECTIONS = set((sys.argv[sys.argv.index("--sections") + 1] if "--sections" in sys.argv
                else "ceilings,train,infer,data,compile").split(","))
dev = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp/out"); os.makedirs(OUT, exist_ok=True)
R = {"env": {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
             "cudnn": torch.backends.cudnn.version() if dev == "cuda" else None}}
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
def log(*a): print(*a, flush=True)
def sync():
    if dev == "cuda": torch.cuda.synchronize()
def save(): json.dump(R, open(f"{OUT}/peer_baseline.json", "w"), indent=1)
log(R["env"])

def timed(fn, warm, iters):
    for _ in range(warm): fn()
    sync(); t = time.perf_counter()
    for _ in range(iters): fn()
    sync(); return (time.perf_counter() - t) / iters

# --- ceilings
if dev == "cuda" and not QUICK and "ceilings" in SECTIONS:
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16); b = torch.randn_like(a)
    s = timed(lambda: a @ b, 3, 10); R["bf16_matmul_tflops"] = 2 * 8192**3 / s / 1e12
    x = torch.randn(2**30 // 2, device=dev, dtype=torch.float16); y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x), 3, 10); R["d2d_copy_TBps"] = 2 * x.numel() * 2 / s / 1e12
    del a, b, x, y; log("ceilings", R["bf16_matmul_tflops"], R["d2d_copy_TBps"])

import timm, torchvision
from torchvision.models.resnet import ResNet, Bottleneck
def tv_resnext101_32x4d(): return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
m = timm.create_model("resnext101_32x4d")
R["params_timm"] = sum(p.numel() for p in m.parameters())
R["params_tv"] = sum(p.numel() for p in tv_resnext101_32x4d().parameters())
from torch.utils.flop_counter import FlopCounterMode
with FlopCounterMode(display=False) as fc:
    m(torch.randn(1, 3, 224, 224))
R["fwd_gflops_per_img"] = fc.get_total_flops() / 1e9
log("params", R["params_timm"], R["params_tv"], "fwd GFLOP/img", R["fwd_gflops_per_img"]); save()

B = 8 if QUICK else 256
WARM, IT = (1, 2) if QUICK else (8, 20)
def train_cfg(name, dtype, cl, compile_=False, builder=lambda: timm.create_model("resnext101_32x4d")):
    torch.manual_seed(0)
    model = builder().to(dev)
    if cl: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.256, momentum=0.875, weight_decay=6.1e-5)
    scaler = torch.amp.GradScaler(enabled=(dtype == torch.float16 and dev == "cuda"))
    fwd = torch.compile(model) if compile_ else model
    x = torch.randn(B, 3, 224, 224, device=dev)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (B,), device=dev)
    def step():
        with torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(fwd(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    t0 = time.perf_counter()
    if dev == "cuda": torch.cuda.reset_peak_memory_stats()
    s = timed(step, WARM + (3 if compile_ else 0), IT)
    r = {"img_s": B / s, "step_ms": s * 1e3, "first_to_end_s": time.perf_counter() - t0,
         "peak_mem_GB": torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else None}
    R.setdefault("train", {})[name] = r; log("train", name, r); save()
    del model, opt, fwd; torch.cuda.empty_cache() if dev == "cuda" else None

def infer_cfg(name, dtype, cl, bs, compile_=False, graphs=False):
    model = timm.create_model("resnext101_32x4d").to(dev).eval()
    if cl: model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, mode="max-autotune-no-cudagraphs" if False else None) if compile_ else model
    x = torch.randn(bs, 3, 224, 224, device=dev)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    def step():
        with torch.inference_mode(), torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32):
            return fwd(x)
    fn = step
    if graphs and dev == "cuda":
        model.half(); xh = x.half()
        s_ = torch.cuda.Stream(); s_.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s_), torch.inference_mode():
            for _ in range(3): model(xh)
        torch.cuda.current_stream().wait_stream(s_)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.inference_mode(): out = model(xh)
        fn = g.replay
    s = timed(fn, WARM + (3 if compile_ else 0), IT * (5 if bs == 1 else 1))
    r = {"img_s": bs / s, "latency_ms": s * 1e3}
    R.setdefault("infer", {})[name] = r; log("infer", name, r); save()
    del model; torch.cuda.empty_cache() if dev == "cuda" else None

half = torch.float16; bf = torch.bfloat16
if "train" in SECTIONS:
    train_cfg("timm fp16-amp NHWC eager", half, True)
    train_cfg("timm bf16-amp NHWC eager", bf, True)
    train_cfg("timm fp16-amp NCHW eager", half, False)
    train_cfg("tv fp16-amp NHWC eager", half, True, builder=tv_resnext101_32x4d)
    if not QUICK: train_cfg("timm tf32 NHWC eager", torch.float32, True)
if "infer" in SECTIONS:
    infer_cfg("timm fp16 NHWC b256 eager", half, True, 8 if QUICK else 256)
    infer_cfg("timm fp16 NHWC b1 eager", half, True, 1)
if dev == "cuda" and "infer" in SECTIONS:
    infer_cfg("timm fp16 NHWC b1 cudagraph", half, True, 1, graphs=True)
    infer_cfg("timm fp16 NHWC b256 cudagraph", half, True, 256, graphs=True)

# --- data pipeline ceilings on real photos (skimage bundled images), ImageNet-like JPEG sizes
if "data" not in SECTIONS:
    if dev == "cuda" and not QUICK and "compile" in SECTIONS:
        train_cfg("timm bf16-amp NHWC compile", bf, True, compile_=True)
        infer_cfg("timm fp16 NHWC b256 compile", half, True, 256, compile_=True)
    log(json.dumps(R, indent=1)); sys.exit(0)
from PIL import Image
import numpy as np
try:
    import skimage.data as sd
    srcs = [getattr(sd, n)() for n in ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]]
except Exception as e:
    log("skimage missing", e); srcs = [np.random.randint(0, 255, (480, 640, 3), np.uint8)]
jdir = "/tmp/jpegs"; os.makedirs(jdir, exist_ok=True)
rng = np.random.default_rng(0); N = 64 if QUICK else 1024
for i in range(N):
    im = Image.fromarray(srcs[i % len(srcs)]).convert("RGB")
    w, h = rng.integers(400, 640), rng.integers(300, 500)
    im.resize((int(w), int(h))).save(f"{jdir}/{i}.jpg", quality=90)
files = sorted(glob.glob(f"{jdir}/*.jpg"))
R["jpeg_mean_kB"] = float(np.mean([os.path.getsize(f) for f in files]) / 1e3)
import torchvision.transforms as T
from torchvision.io import decode_jpeg, read_file
class DS(torch.utils.data.Dataset):
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.PILToTensor()])
    def __len__(self): return len(files) * 4
    def __getitem__(self, i): return self.tf(Image.open(files[i % len(files)]).convert("RGB"))
nw = min(16, os.cpu_count())
dl = torch.utils.data.DataLoader(DS(), batch_size=256 if not QUICK else 16, num_workers=nw, persistent_workers=True)
for _ in dl: break
t = time.perf_counter(); n = 0
for b in dl: n += b.shape[0]
R["cpu_pil_pipeline_img_s"] = n / (time.perf_counter() - t); R["cpu_workers"] = nw
log("cpu pipeline img/s", R["cpu_pil_pipeline_img_s"], "workers", nw); save()
if dev == "cuda":
    datas = [read_file(f) for f in files]
    def gpu_decode():
        imgs = decode_jpeg(datas[:256], device="cuda")
        return [F.interpolate(im[None, :, :200, :200].float(), size=224) for im in imgs]
    s = timed(gpu_decode, 2, 5)
    R["gpu_nvjpeg_decode_img_s"] = 256 / s; log("gpu nvjpeg batch decode img/s", R["gpu_nvjpeg_decode_img_s"]); save()
if dev == "cuda" and not QUICK and "compile" in SECTIONS:
    train_cfg("timm bf16-amp NHWC compile", bf, True, compile_=True)
    infer_cfg("timm fp16 NHWC b256 compile", half, True, 256, compile_=True)
log(json.dumps(R, indent=1))
