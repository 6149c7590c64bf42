//! Device selection: CUDA is strict, `auto` reports its fallback.

use burn::tensor::Tensor;
use relkd_models::device::{DeviceChoice, DeviceError};

#[test]
fn parse_device_names() {
    assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
    assert_eq!("CUDA".parse(), Ok(DeviceChoice::Cuda(0)));
    assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
    assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
    assert!("gpu".parse::<DeviceChoice>().unwrap_err().contains("cpu, cuda, cuda:N or auto"));
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
