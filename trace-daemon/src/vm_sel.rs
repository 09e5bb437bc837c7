//! `--vm`: one VM by its `struct kvm` address (`0x...`), the pid of the
//! process that created it (decimal), or a name the operator knows (the
//! libvirt domain, QEMU's `-name`, its uuid; see `identity`).
use crate::identity::Identity;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmSel {
    Addr(u64),
    Pid(u32),
    Name(String),
}

impl std::str::FromStr for VmSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(VmSel::Addr)
                .map_err(|e| format!("{s:?} is not a hex kvm address: {e}"));
        }
        if s.is_empty() {
            return Err("an empty VM selector: give a name, a pid or a kvm address (0x...)".into());
        }
        Ok(s.parse::<u32>()
            .map_or_else(|_| VmSel::Name(s.to_owned()), VmSel::Pid))
    }
}

impl VmSel {
    /// Whether a VM made by `id` is selected (an address is never a name).
    pub fn names(&self, id: &Identity) -> bool {
        match self {
            VmSel::Addr(_) => false,
            VmSel::Pid(p) => id.pid == *p,
            VmSel::Name(n) => id.matches(n),
        }
    }
}

impl std::fmt::Display for VmSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmSel::Addr(a) => write!(f, "VM {a:#x}"),
            VmSel::Pid(p) => write!(f, "VMs created by pid {p}"),
            VmSel::Name(n) => write!(f, "VM {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_pids_and_names() {
        assert_eq!("0xffff8881".parse::<VmSel>(), Ok(VmSel::Addr(0xffff8881)));
        assert_eq!("1234".parse::<VmSel>(), Ok(VmSel::Pid(1234)));
        assert_eq!("lab-a".parse::<VmSel>(), Ok(VmSel::Name("lab-a".into())));
        assert!("0xzz".parse::<VmSel>().is_err());
        assert!("".parse::<VmSel>().is_err());
        let id = Identity {
            pid: 7,
            comm: "qemu".into(),
            domain: Some("lab-a".into()),
            ..Identity::default()
        };
        assert!(VmSel::Name("lab-a".into()).names(&id));
        assert!(VmSel::Pid(7).names(&id));
        assert!(!VmSel::Name("lab-b".into()).names(&id));
        assert!(!VmSel::Addr(7).names(&id));
    }
}
