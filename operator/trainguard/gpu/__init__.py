"""The CUDA side of weight integrity, shared by the trainer library and the sidecar: GPU memory
shared through CUDA IPC (`cuda_ipc`), the fingerprint's Triton kernel (`kernel`), and PyTorch
tensors as the bytes the CPU reference reads (`tensors`). Needs PyTorch; `kernel` needs Triton."""
