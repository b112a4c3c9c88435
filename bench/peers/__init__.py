"""Other implementations the benchmarks compare ssdh_jax with. torch_ref: a PyTorch port of the SSDH model,
loss and SGD step (needs torch: `make bench-peers`); loss_check: that the port computes what ssdh_jax does."""
