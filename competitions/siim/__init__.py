"""SIIM-ACR Pneumothorax Segmentation: 1024x1024 chest X-ray DICOMs, relative RLE, mean Dice."""
