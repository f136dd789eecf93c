//! Class-conditional sampling with classifier-free guidance, batched `[cond, uncond]` as diffusers'
//! `DiTPipeline` does (either order can be asked for), with DDIM.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use cache_core::{Branch, CacheStrategy, CallContext, CfgOrder, StepContext};
use models::weights::randn;
use models::{DDIMScheduler, DDIMSchedulerConfig};

use crate::dit::DiT;

/// Samples one latent image of `class`; resets `strategy` first.
///
/// # Shapes
/// returns `[1, C, H, W]`
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend, S: CacheStrategy<B> + ?Sized>(
    model: &DiT<B>,
    class: usize,
    steps: usize,
    guidance: f32,
    seed: u64,
    order: CfgOrder,
    strategy: &mut S,
    device: &B::Device,
) -> Tensor<B, 4> {
    let c = model.config();
    let mut scheduler = DDIMScheduler::new(DDIMSchedulerConfig { clip_sample: false, ..Default::default() }).expect("valid");
    let timesteps = scheduler.set_timesteps(steps).expect("steps in range").to_vec();
    let mut latents: Tensor<B, 4> = randn(seed, &[1, c.channels, c.size, c.size]).to_tensor(device);
    let (cond, null) = (class as i64, c.num_classes as i64);
    let labels = match order {
        CfgOrder::CondFirst => [cond, null],
        CfgOrder::UncondFirst => [null, cond],
    };
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.to_vec(), [2]), device);
    strategy.reset();
    // An engine configured for another step count (TeaCache's `num_steps`, MagCache's) refuses here.
    strategy.check_steps(steps).expect("the strategy was configured for this step count");
    for (i, &t) in timesteps.iter().enumerate() {
        let ctx = CallContext::new(StepContext { step: i, num_steps: steps, timestep: t as f64, sigma: None }, Branch::Cfg(order), 2);
        let x = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
        let out = model.forward(x, &[t as f32; 2], y.clone(), &ctx, strategy);
        let [a, b]: [Tensor<B, 4>; 2] = out.chunk(2, 0).try_into().expect("two halves");
        let (cond, uncond) = match order {
            CfgOrder::CondFirst => (a, b),
            CfgOrder::UncondFirst => (b, a),
        };
        let guided = uncond.clone() + (cond - uncond) * guidance;
        latents = scheduler.step(guided, t, latents).expect("timestep in range");
    }
    latents
}
