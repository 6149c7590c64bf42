//! A teacher run by ONNX Runtime (`teacher.runtime: onnx`) distils exactly as the same teacher
//! run by Burn: every loss term at the first step agrees within 1e-4 relative.

mod common;

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor};
use common::lock_device_rng;
use relkd_core::transforms::Preprocessing;
use relkd_infer::runtime::Provider;
use relkd_models::{Architecture, Network, NetworkConfig, Segmenter};
use relkd_runs::card::ModelCard;
use relkd_train::config::{Distiller, LossConfig};
use relkd_train::losses::Term;
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::kernel_matrix::KernelMatrixConfig;
use relkd_train::losses::segmentation::SegmentationLoss;
use relkd_train::teacher::{OnnxTeacher, Teacher};
use relkd_train::trainer::{Distillation, Trainee, loss_terms, teacher_outputs};

/// An untrained teacher at width 0.125 (frozen) and its card, for 32×32 single-channel slices.
fn small_teacher(architecture: Architecture, device: &Device) -> (Network, ModelCard) {
    let teacher = NetworkConfig::new(architecture).with_width(0.125).init(device).valid();
    let prep = Preprocessing { size: 32, context: 0 };
    let card = ModelCard { width: 0.125, ..ModelCard::untrained("teacher", architecture, &teacher, prep) };
    (teacher, card)
}

#[test]
fn an_onnx_runtime_teacher_gives_burns_loss_terms() {
    let _draws = lock_device_rng();
    let device = Device::flex().autodiff();
    device.seed(3);
    let plain = device.clone().without_autodiff();
    for architecture in [Architecture::Unetpp, Architecture::Deeplabv3plus] {
        let (teacher, card) = small_teacher(architecture, &device);
        let dir = tempfile::tempdir().unwrap();
        let onnx = OnnxTeacher::export(&teacher, &card, &dir.path().join("teacher.onnx")).unwrap();
        assert_eq!(onnx.feature_channels, Some(teacher.tap().channels), "{architecture}");
        let (burn, ort) = (Teacher::Burn(teacher), Teacher::Onnx(Arc::new(onnx)));

        let student = NetworkConfig::new(Architecture::Enet).with_width(0.25).init(&device);
        let trainee = Trainee {
            kmm: Some(KernelMatrixConfig::new(student.tap().channels, burn.feature_channels().unwrap()).init(&device)),
            aam: Some(AffinityConfig::new(2).init(&device)),
            net: student,
        };
        // An odd size, which both pad to the teacher's stride.
        let images = Tensor::<4>::random([2, 1, 36, 44], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<3, Int>::random([2, 36, 44], Distribution::Uniform(0.0, 2.0), &device);
        let seg = SegmentationLoss::default();
        let distillers = [
            (Distiller::Relational, &[Term::Lm, Term::Kmm, Term::Aam][..]),
            (Distiller::Hinton, &[Term::Kd][..]),
            (Distiller::Attention, &[Term::At][..]),
        ];
        for (distiller, distilled) in distillers {
            let losses = LossConfig { distiller, ..LossConfig::default() };
            let value = |teacher: &Teacher, term: Term| {
                device.seed(9); // the same dropout masks in the student's forward
                let d = Distillation::new(teacher.clone(), &losses);
                let out = teacher_outputs(&d, &images, &plain);
                let terms = loss_terms(&trainee, images.clone(), labels.clone(), &seg, Some((out, &d)));
                let value = terms.get(term).unwrap_or_else(|| panic!("{distiller:?} computes no {term:?}"));
                value.clone().into_scalar::<f32>() as f64
            };
            // With ENet (channel dropout) the first step after `device.seed` differed from every
            // later one under the same seed (flex, Burn 0.22.1; a dropout-free student did not),
            // so one discarded step comes first.
            value(&burn, distilled[0]);
            for &term in distilled {
                let (b, o) = (value(&burn, term), value(&ort, term));
                assert!(
                    (b - o).abs() <= 1e-4 * b.abs().max(1e-6),
                    "{architecture} {term:?}: Burn {b}, ONNX Runtime {o}"
                );
            }
        }
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// An ONNX file from elsewhere, distilled from by a node's name: relkd's own UNet++ exported
/// with logits only, its tap named by the tensor it has inside, gives the same outputs as the
/// export with the tap as an output.
#[test]
fn any_onnx_model_distils_through_a_named_tensor() {
    use onnx_protobuf::Message;
    use relkd_export::{Options, Probe, export};

    let _draws = lock_device_rng();

    let device = Device::flex().autodiff();
    device.seed(4);
    let plain = device.clone().without_autodiff();
    let (teacher, card) = small_teacher(Architecture::Unetpp, &device);
    let dir = tempfile::tempdir().unwrap();
    let (logits_only, own) = (dir.path().join("logits-only.onnx"), dir.path().join("own.onnx"));
    export(&teacher, &card, &logits_only, &Options::fp32(), &[Probe::random([1, 1, 32, 32], &plain)], &plain).unwrap();
    let own = OnnxTeacher::export(&teacher, &card, &own).unwrap();
    // The tap's name inside the graph: what the features export's Identity reads.
    let with_features =
        onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(dir.path().join("own.onnx")).unwrap()).unwrap();
    let identity = with_features.graph.node.iter().find(|n| n.output == ["features"]).unwrap();
    let tap = identity.input[0].clone();

    let foreign = OnnxTeacher::from_file(&logits_only, Some(&tap), [2, 1, 32, 32], Provider::Cpu).unwrap();
    assert_eq!(foreign.feature_channels, Some(teacher.tap().channels));
    let images = Tensor::<4>::random([2, 1, 40, 36], Distribution::Normal(0.0, 1.0), &plain);
    let (a, b) = (Teacher::Onnx(Arc::new(foreign)), Teacher::Onnx(Arc::new(own)));
    let (a, b) = (a.forward_features(images.clone()), b.forward_features(images));
    let same = |x: Tensor<4>, y: Tensor<4>| (x - y).abs().max().into_scalar::<f32>() == 0.0;
    assert!(same(a.logits, b.logits) && same(a.feature.unwrap(), b.feature.unwrap()));
    assert_eq!(staged_copies("logits-only.onnx"), 0, "the edited graph is staged only while it is opened");
}

/// Temporaries of a teacher file named `name` left in the temporary folder.
fn staged_copies(name: &str) -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".relkd-partial") && n.ends_with(&format!("-{name}"))
        })
        .count()
}

/// Every teacher relkd cannot distil from is refused before training with the file and the
/// cause: not ONNX, no tensor of the given name, a 3D model, logits of another class count or
/// size, an input relkd cannot give.
#[test]
fn bad_teachers_are_refused_with_their_cause() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
    use onnx_protobuf::type_proto::Value;
    use onnx_protobuf::{Message, ModelProto, NodeProto};

    let _draws = lock_device_rng();
    let dir = tempfile::tempdir().unwrap();
    let edited = |name: &str, edit: &dyn Fn(&mut ModelProto)| {
        let mut model = ModelProto::parse_from_bytes(&std::fs::read(fixture("tiny_conv.onnx")).unwrap()).unwrap();
        edit(&mut model);
        let path = dir.path().join(name);
        std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
        path
    };
    let input_dims = |model: &mut ModelProto, dims: Vec<Dim>| {
        let input = &mut model.graph.as_mut().unwrap().input[0];
        let Some(Value::TensorType(tensor)) = &mut input.type_.as_mut().unwrap().value else { panic!("a tensor") };
        let shape = tensor.shape.as_mut().unwrap();
        shape.dim = dims
            .into_iter()
            .map(|v| {
                let mut d = onnx_protobuf::tensor_shape_proto::Dimension::new();
                d.value = Some(v);
                d
            })
            .collect();
    };
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "these are notes, not a model").unwrap();
    let volumetric = edited("volumetric.onnx", &|m| {
        let p = |s: &str| Dim::DimParam(s.into());
        input_dims(m, vec![p("N"), Dim::DimValue(1), p("D"), p("H"), p("W")]);
    });
    let three_channels = edited("rgb.onnx", &|m| {
        let p = |s: &str| Dim::DimParam(s.into());
        input_dims(m, vec![p("N"), Dim::DimValue(3), p("H"), p("W")]);
    });
    // Three classes: the image concatenated three times.
    let three_classes = edited("three-classes.onnx", &|m| {
        let graph = m.graph.as_mut().unwrap();
        let mut concat = NodeProto::new();
        concat.op_type = "Concat".into();
        concat.input = vec!["image".into(), "image".into(), "image".into()];
        concat.output = vec!["logits".into()];
        let mut axis = onnx_protobuf::AttributeProto::new();
        axis.name = "axis".into();
        axis.i = 1;
        axis.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
        concat.attribute = vec![axis];
        graph.node = vec![concat];
        graph.initializer.clear();
        graph.output[0].type_ = Default::default();
    });
    let cases = [
        (&text, "logits", "not an ONNX model"),
        (&fixture("tiny_conv.onnx"), "x3_0", "no tensor named 'x3_0'"),
        (&volumetric, "logits", "its input has rank 5 (a 3D model?)"),
        (&three_classes, "logits", "a teacher must give [N, 2, H, W]"),
        (&fixture("tiny_strided.onnx"), "logits", "at the input's height and width"),
        (&three_channels, "logits", "its input takes 3 channel(s), the students' slices have 1"),
    ];
    for (file, feature, cause) in cases {
        let err = OnnxTeacher::from_file(file, Some(feature), [2, 1, 32, 32], Provider::Cpu).unwrap_err();
        let message = format!("{err:#}");
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(message.contains(&*name) && message.contains(cause), "{name}: {message}");
        assert_eq!(staged_copies(&name), 0, "{name}: a refused teacher left its staged graph");
    }
}
