/* LD_PRELOADed into a Python that imports a real PyTorch on a machine without a GPU: the
 * two CUDA runtime calls PyTorch's pluggable allocator makes before it calls the plug-in
 * (c10::cuda::GetDevice), answered as if device 0 were current, so that
 * torch._C._cuda_cudaCachingAllocator_raw_alloc reaches fragless (on the driver double).
 * Everything else of the runtime still says there is no driver. */
__attribute__((visibility("default"))) int cudaGetDevice(int *device)
{
    *device = 0;
    return 0;
}

__attribute__((visibility("default"))) int cudaGetDeviceCount(int *count)
{
    *count = 1;
    return 0;
}
