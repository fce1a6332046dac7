"""A folder of images, one image or a video -> pictures + COCO-style results.json (src/solov2/cli/predict.py).

    python run.py CONFIG CHECKPOINT INPUT --out OUTDIR
"""
from solov2.cli.predict import run_main

if __name__ == "__main__":
    run_main()
