//! Device selection: CUDA is strict, `auto` reports its fallback.

use burn::tensor::Tensor;
use relkd_models::device::{DeviceChoice, DeviceError};

#[test]
fn parse_device_names() {
    assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
    assert_eq!("CUDA".parse(), Ok(DeviceChoice::Cuda(0)));
    assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
    assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
    assert_eq!("cubecl-cpu".parse(), Ok(DeviceChoice::CubeclCpu));
    assert!("gpu".parse::<DeviceChoice>().unwrap_err().contains("cpu, cuda, cuda:N, cubecl-cpu or auto"));
}

#[test]
fn cubecl_cpu_is_a_device_only_where_it_was_built() {
    let resolved = DeviceChoice::CubeclCpu.resolve();
    if cfg!(feature = "cubecl-cpu") {
        let device = resolved.unwrap().device;
        assert_eq!(Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>(), 4.0);
    } else {
        let Err(err) = resolved else { panic!("a device without the cubecl-cpu feature") };
        assert!(matches!(err, DeviceError::CubeclCpuNotBuilt));
        assert!(err.to_string().contains("--features cubecl-cpu"), "{err}");
    }
}

#[test]
fn cuda_is_strict_and_auto_says_why_it_fell_back() {
    match DeviceChoice::Cuda(0).resolve() {
        Ok(resolved) => {
            // A machine with a GPU and a CUDA build: the device really computes.
            let x = Tensor::<1>::ones([4], &resolved.device).sum().into_scalar::<f32>();
            assert_eq!(x, 4.0);
        }
        Err(err) => {
            assert!(matches!(err, DeviceError::CudaNotBuilt | DeviceError::CudaUnavailable { .. }));
            assert!(err.to_string().contains("--device cpu"), "{err}");
            let auto = DeviceChoice::Auto.resolve().unwrap();
            assert_eq!(auto.description, "cpu (flex)");
            assert!(auto.fallback.is_some());
        }
    }
    let cpu = DeviceChoice::Cpu.resolve().unwrap();
    assert!(cpu.fallback.is_none());
}
