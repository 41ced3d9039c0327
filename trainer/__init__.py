"""gpurun's GPT-2 trainer. Runs on the instance; needs torch + numpy only, never the controller."""
