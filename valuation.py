"""COCO mask (segm) and box (bbox) AP of a SOLOv2 checkpoint on a COCO-format split, or of a results file
(the body: src/solov2/cli/evaluate.py).

    python valuation.py CONFIG CHECKPOINT [--out results.json] [--eval segm bbox] [--max-images N]
    python valuation.py --config CONFIG --checkpoint CHECKPOINT ...        (the same, as flags)
    python valuation.py --results results.json --ann data/trashcan/annotations/instances_val_trashcan.json
"""
from solov2.cli.evaluate import main

if __name__ == "__main__":
    main()
