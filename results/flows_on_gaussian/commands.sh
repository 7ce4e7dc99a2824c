#!/bin/bash
# The measurements of results/README.md, "Flows on the Gaussian: conditioner width and
# step cost". One thread; torch 2.13.0+cpu, CPU capability AVX512.
export OMP_NUM_THREADS=1

# Step cost: M2 784-500-50, batch 200, contenders interleaved (speed_*.txt).
python -m benchmarks.guide_speed --guides gaussian,maf@64,maf@128,maf@256,maf@500,pyro-iaf@64,pyro-iaf@128,pyro-iaf@256,pyro-iaf@500 --steps 20
python -m benchmarks.guide_speed --guides gaussian,maf,nsf,realnvp,pyro-iaf,pyro-spline,planar,radial --steps 20
python -m benchmarks.guide_speed --guides gaussian,realnvp@64,realnvp@96,planar@64,planar@32,radial@64,radial@96,nsf@64,pyro-spline@64 --steps 20
python -m benchmarks.guide_speed --guides gaussian,planar@128x2,planar@64x2,planar@64x3,radial@128x2,radial@64x4,realnvp@64x1 --steps 20
# Where the spline flow's step goes (nsf_profile.txt):
python -m benchmarks.guide_speed --guides gaussian,maf,nsf --steps 10 --profile 5 > nsf_profile.txt
# torch's softmax over 8 bins, the shape nsf's widths and heights have (2000 rows x 50 units):
python -c 'import torch,time,timeit; x=torch.randn(2000,50,8); print(*(f"{n} {1000*min(timeit.repeat(f,number=20,repeat=5,timer=time.process_time))/20:.1f} CPU-ms" for n,f in [("softmax(-1)",lambda:torch.softmax(x,-1)),("exp/sum",lambda:(lambda e:e/e.sum(-1,keepdim=True))((x-x.amax(-1,keepdim=True)).exp()))]))'

# Width: M2 on mnist-5k, 100 labels, 10 epochs; seeds 0 (all widths) and 1 (128, 500).
R=runs/flows_on_gaussian
T="ppl-ssvae train --model m2 --dataset mnist-5k --labels 100 --z-dim 50 --hidden 500 --epochs 10 --no-progress"
$T --out $R/gaussian
for w in 64 128 256 500; do $T --guide maf --guide-arg "hidden_features=[$w,$w]" --out $R/maf$w; done
$T --seed 1 --out $R/gaussian-s1
for w in 128 500; do $T --seed 1 --guide maf --guide-arg "hidden_features=[$w,$w]" --out $R/maf$w-s1; done
C="ppl-ssvae compare --checkpoint last --iwae 200 --iwae-rows 500"
$C $R/gaussian $R/maf64 $R/maf128 $R/maf256 $R/maf500 > compare_last_s0.md
$C $R/gaussian-s1 $R/maf128-s1 $R/maf500-s1 > compare_last_s1.md
$C $R/maf128 $R/maf256 $R/maf500 > compare_last_s0_128.md
$C $R/maf128-s1 $R/maf500-s1 > compare_last_s1_128.md
