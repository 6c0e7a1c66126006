//! The clustering of `dma modes` on real images whose kinds are known: Fashion-MNIST test images of sandals,
//! sneakers and ankle boots (one third each, as the embedded model was trained), embedded by the embedded CLIP,
//! clustered at the model's PCA width with each `--cluster-criterion`. Per draw of 100 images: the number of
//! clusters and the smallest cluster purity, by true label and by the CLIP's zero-shot class. This separates what
//! the method does with three clean kinds from what the model draws.
//! Run: `cargo run --release --example real_footwear_clusters -- [DRAWS] [PCA_DIMS]` (defaults 8, the model's).
use dma::clustering::{ClusterCount, Criterion};
use dma::data::{data_dir, Dataset, Rng, Split};
use dma::evaluation::zero_shot::ZeroShot;
use dma::loaders::run_defaults;
use dma::pipelines::modes::{cluster_images, Describers, DiscoverySettings};
use dma::loaders::ModelSource;
use std::path::PathBuf;
use tch::{Device, Tensor};

const FOOTWEAR: [usize; 3] = [5, 7, 9];
const PER_KIND: usize = 33;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded"));
    let defaults = run_defaults(&ModelSource::Folder(model_dir.clone()))?;
    let draws: u64 = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let pca_dims: usize = args.get(2).map_or(Ok(defaults.pca_dims), |s| s.parse())?;
    let classifier = ZeroShot::embedded(&model_dir.join("clip"), Device::Cpu)?;
    let data = Dataset::load(&data_dir()?, Split::Test)?;
    let images = data.images();
    let members: Vec<Vec<i64>> = FOOTWEAR.iter().map(|&c| data.labels().iter().enumerate().filter(|(_, &l)| l == c).map(|(i, _)| i as i64).collect()).collect();
    println!("{PER_KIND} Fashion-MNIST test images per kind (sandal, sneaker, ankle boot), PCA {pca_dims} dims");
    println!("| draw | criterion | clusters | least pure (true label) | least pure (zero-shot) |\n|---|---|---|---|---|");
    for draw in 0..draws {
        let mut rng = Rng::new(draw);
        let (ids, truth): (Vec<i64>, Vec<usize>) = members.iter().zip(FOOTWEAR).flat_map(|(m, c)| (0..PER_KIND).map(|_| (*rng.choose(m), c)).collect::<Vec<_>>()).unzip();
        // The dataset's [-1, 1] to the [0, 1] the CLIP takes.
        let batch = (images.index_select(0, &Tensor::from_slice(&ids)) + 1.0) / 2.0;
        let zero_shot = classifier.classify(&batch)?;
        for criterion in [Criterion::Silhouette, Criterion::Bic] {
            let settings = DiscoverySettings { samples: ids.len() as i64, clusters: ClusterCount::Auto { max: 8 }, criterion, pca_dims, grounding: None };
            let clustering = cluster_images(Describers { clip: &classifier.embedder, vqa: None }, &batch, &settings, draw)?;
            let least_pure = |classes: &[usize]| {
                (0..clustering.k)
                    .map(|k| {
                        let of_k: Vec<usize> = clustering.labels.iter().zip(classes).filter(|(&l, _)| l == k).map(|(_, &c)| c).collect();
                        let top = of_k.iter().map(|c| of_k.iter().filter(|&d| d == c).count()).max().unwrap_or(0);
                        top as f64 / of_k.len().max(1) as f64
                    })
                    .fold(1.0f64, f64::min)
            };
            println!("| {draw} | {criterion:?} | {} | {:.0}% | {:.0}% |", clustering.k, 100.0 * least_pure(&truth), 100.0 * least_pure(&zero_shot));
        }
    }
    Ok(())
}
