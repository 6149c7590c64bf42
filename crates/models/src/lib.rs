//! The five segmentation networks of the paper (SPEC §3), in Burn.
//!
//! Students: [`enet`], [`espnet`], [`erfnet`]. Teachers: [`unetpp`], [`deeplabv3plus`].
//! Every network implements [`Segmenter`]: logits plus the named feature map that
//! distillation taps, for any input height and width.

pub mod cpu;
pub mod flops;
pub mod layers;
pub mod lower;

pub mod deeplabv3plus;
pub mod device;
pub mod enet;
pub mod erfnet;
pub mod espnet;
pub mod unetpp;

use burn::tensor::Tensor;

use crate::flops::MacGraph;
use crate::layers::{crop, pad_to_multiple};
use crate::lower::{Graph, Lowered, Value};

/// What a forward pass gives training: the logits and the distillation feature.
#[derive(Debug, Clone)]
pub struct SegOutput {
    /// `[b, classes, h, w]`, the input's height and width.
    pub logits: Tensor<4>,
    /// `[b, tap.channels, h'/stride, w'/stride]`, with `h'` and `w'` the input's height and
    /// width padded to the network's total stride.
    pub feature: Tensor<4>,
}

/// The feature map a network offers for distillation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    /// The layer's name in the paper's terms (e.g. `x3_0`).
    pub name: &'static str,
    pub channels: usize,
    /// Downsampling factor relative to the input.
    pub stride: usize,
}

/// A segmentation network as training and export see it.
pub trait Segmenter {
    /// Forward on an input whose height and width are multiples of [`Segmenter::total_stride`].
    fn forward_aligned(&self, x: Tensor<4>) -> SegOutput;

    /// The factor every input side must divide by for the encoder and decoder to line up.
    fn total_stride(&self) -> usize;

    /// The distillation tap.
    fn tap(&self) -> Tap;

    /// [`Segmenter::forward_aligned`] as operations on `g`: its logits and tapped feature
    /// (inference semantics: see [`lower`]).
    fn lower_aligned(&self, g: &mut dyn Graph, x: &Value) -> Lowered;

    /// Forward on any input size: padded at the bottom and right to the total stride, and the
    /// logits cropped back, so they always have the input's height and width.
    fn forward_features(&self, x: Tensor<4>) -> SegOutput {
        let [_, _, h, w] = x.dims();
        let out = self.forward_aligned(pad_to_multiple(x, self.total_stride()));
        SegOutput { logits: crop(out.logits, h, w), feature: out.feature }
    }

    /// Logits `[b, classes, h, w]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_features(x).logits
    }

    /// GFLOPs (2 × MACs, see [`flops`]) of one image of `h × w`, counted on the network's own
    /// lowering at the padded size it runs at.
    fn gflops(&self, h: usize, w: usize) -> f64 {
        let s = self.total_stride();
        let mut graph = MacGraph::default();
        let input = graph.input([h.next_multiple_of(s), w.next_multiple_of(s)]);
        self.lower_aligned(&mut graph, &input);
        graph.counter.gflops()
    }
}

/// The five networks of Table 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Enet,
    Espnet,
    Erfnet,
    Unetpp,
    Deeplabv3plus,
}

/// Teachers are trained first and frozen; students learn from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Student,
    Teacher,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
        })
    }
}

impl Architecture {
    pub const ALL: [Architecture; 5] = [
        Architecture::Espnet,
        Architecture::Enet,
        Architecture::Erfnet,
        Architecture::Unetpp,
        Architecture::Deeplabv3plus,
    ];

    /// The command-line and config name (`enet`, `unetpp`, …).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Enet => "enet",
            Architecture::Espnet => "espnet",
            Architecture::Erfnet => "erfnet",
            Architecture::Unetpp => "unetpp",
            Architecture::Deeplabv3plus => "deeplabv3plus",
        }
    }

    /// The name as the paper prints it.
    pub fn display_name(self) -> &'static str {
        match self {
            Architecture::Enet => "ENet",
            Architecture::Espnet => "ESPNet",
            Architecture::Erfnet => "ERFNet",
            Architecture::Unetpp => "UNet++",
            Architecture::Deeplabv3plus => "DeepLabV3+",
        }
    }

    pub fn role(self) -> Role {
        match self {
            Architecture::Unetpp | Architecture::Deeplabv3plus => Role::Teacher,
            _ => Role::Student,
        }
    }

    /// Table 1 of the paper: (parameters in millions, GFLOPs at 1×1×384×384).
    pub fn paper_table1(self) -> (f64, f64) {
        match self {
            Architecture::Espnet => (0.183, 1.27),
            Architecture::Enet => (0.353, 2.2),
            Architecture::Erfnet => (2.06, 16.56),
            Architecture::Unetpp => (36.6, 621.38),
            Architecture::Deeplabv3plus => (56.8, 273.94),
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Architecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Architecture::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = Architecture::ALL.iter().map(|a| a.name()).collect();
            format!("unknown network '{s}' (choose from {})", names.join(", "))
        })
    }
}

/// Any of the five networks, built from one config.
// The variants differ in size, but a process holds one or two networks; boxing them would hide
// the module tree from Burn's derive.
#[allow(clippy::large_enum_variant)]
#[derive(burn::module::Module, Debug)]
pub enum Network {
    Enet(enet::Enet),
    Espnet(espnet::Espnet),
    Erfnet(erfnet::Erfnet),
    Unetpp(unetpp::Unetpp),
    DeepLabV3Plus(deeplabv3plus::DeepLabV3Plus),
}

/// What every architecture's config shares: input channels, classes and a width multiplier.
#[derive(burn::config::Config, Debug)]
pub struct NetworkConfig {
    pub architecture: Architecture,
    #[config(default = 1)]
    pub in_channels: usize,
    #[config(default = 2)]
    pub classes: usize,
    /// Channel multiplier (UNet++: base filters = 64 × width); 1.0 is the paper's network.
    #[config(default = 1.0)]
    pub width: f64,
}

impl NetworkConfig {
    pub fn init(&self, device: &burn::tensor::Device) -> Network {
        let (c, k, w) = (self.in_channels, self.classes, self.width);
        match self.architecture {
            Architecture::Enet => {
                Network::Enet(enet::EnetConfig::new().with_in_channels(c).with_classes(k).with_width(w).init(device))
            }
            Architecture::Espnet => Network::Espnet(
                espnet::EspnetConfig::new().with_in_channels(c).with_classes(k).with_width(w).init(device),
            ),
            Architecture::Erfnet => Network::Erfnet(
                erfnet::ErfnetConfig::new().with_in_channels(c).with_classes(k).with_width(w).init(device),
            ),
            Architecture::Unetpp => Network::Unetpp(
                unetpp::UnetppConfig::new()
                    .with_in_channels(c)
                    .with_classes(k)
                    .with_base_filters(layers::scaled(64, w))
                    .init(device),
            ),
            Architecture::Deeplabv3plus => Network::DeepLabV3Plus(
                deeplabv3plus::DeepLabV3PlusConfig::new()
                    .with_in_channels(c)
                    .with_classes(k)
                    .with_width(w)
                    .init(device),
            ),
        }
    }
}

impl Network {
    fn inner(&self) -> &dyn Segmenter {
        match self {
            Network::Enet(n) => n,
            Network::Espnet(n) => n,
            Network::Erfnet(n) => n,
            Network::Unetpp(n) => n,
            Network::DeepLabV3Plus(n) => n,
        }
    }
}

impl Segmenter for Network {
    fn forward_aligned(&self, x: Tensor<4>) -> SegOutput {
        self.inner().forward_aligned(x)
    }

    fn total_stride(&self) -> usize {
        self.inner().total_stride()
    }

    fn tap(&self) -> Tap {
        self.inner().tap()
    }

    fn lower_aligned(&self, g: &mut dyn Graph, x: &Value) -> Lowered {
        self.inner().lower_aligned(g, x)
    }
}

/// Learnable parameters, as PyTorch's `parameters()` counts them: every float parameter except
/// batch-norm running statistics, which Burn's `num_params` includes but which are buffers.
pub fn trainable_params<M: burn::module::Module>(module: &M) -> usize {
    use burn::module::{ModuleVisitor, Param};

    #[derive(Default)]
    struct Counter {
        path: Vec<String>,
        count: usize,
    }
    impl ModuleVisitor for Counter {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let is_running_statistic =
                matches!(self.path.last().map(String::as_str), Some("running_mean" | "running_var"));
            if !is_running_statistic {
                self.count += param.lazy_shape().num_elements();
            }
        }
    }
    let mut counter = Counter::default();
    module.visit(&mut counter);
    counter.count
}
