import torch

from ppflow.data.vae import LatentVAE, load_vae


def tiny_vae_dir(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    )
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_load_and_round_trip_shapes(tmp_path):
    vae = load_vae(str(tiny_vae_dir(tmp_path)), local_files_only=True)
    assert isinstance(vae, LatentVAE) and vae.scaling_factor == 0.5 and vae.downsample == 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x, sample=False)
    assert z.shape == (2, 4, 8, 8)
    raw = vae.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(z, raw * 0.5)
    assert vae.decode(z).shape == (2, 3, 16, 16)
