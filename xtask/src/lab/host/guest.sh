#!/bin/bash
# The host lab's run, inside a Debian guest with systemd as PID 1 (started by
# kvscope-lab.service). kvscope is installed from its package and run as the
# service; libvirt starts QEMU domains with the edu devices assigned. Every
# assertion prints one line, `CHECK <name> PASS|FAIL <detail>`; counts print
# `COUNT <scenario> <mode> key=value ...`. xtask (lab/host/mod.rs) fails the
# row on a FAIL or on a check it expected and never saw.
set -u
export SYSTEMD_PAGER= SYSTEMD_COLORS=0 LC_ALL=C
METRICS=127.0.0.1:9477/metrics

check() { # NAME STATUS DETAIL...
    local name=$1 st=$2
    shift 2
    if [ "$st" = 0 ]; then echo "CHECK $name PASS $*"; else echo "CHECK $name FAIL $*"; fi
}
metric() { # exact series name (labels included) -> value, or "absent"
    curl -sf "$METRICS" | awk -v m="$1" '$1 == m { v = $2 } END { print (v == "" ? "absent" : v) }'
}
prop() { systemctl show -P "$2" "$1"; }

# The kernel's own records: one debugfs directory per live VM (PID-FD), and
# the VFIO device fds in every process's fd table.
kernel_vms() { find /sys/kernel/debug/kvm -maxdepth 1 -name '*-*' -type d 2>/dev/null | wc -l; }
kernel_vfio_fds() {
    find /proc/[0-9]*/fd -maxdepth 1 -type l -lname 'anon_inode:\[vfio-device\]' 2>/dev/null | wc -l
}

# kvscope's live counts equal the kernel's (its ingest lags: up to 10 s).
agree() { # SCENARIO MODE
    local i kv kd sv sd
    for i in $(seq 1 20); do
        kv=$(kernel_vms) kd=$(kernel_vfio_fds)
        sv=$(metric kvscope_live_vms) sd=$(metric kvscope_open_vfio_devices)
        [ "$kv" = "$sv" ] && [ "$kd" = "$sd" ] && break
        sleep 0.5
    done
    check "$1/$2/counts" "$([ "$kv" = "$sv" ] && [ "$kd" = "$sd" ]; echo $?)" \
        "kernel: $kv VMs, $kd VFIO device fds; kvscope: $sv live VMs, $sd open devices"
}

# Until every "attaching again" of the daemon has its "attached again" and
# nothing new came for 3 s (bounded: 90 s).
kvscope_settled() {
    local i a b quiet=0
    for i in $(seq 1 180); do
        a=$(journalctl -u kvscope --no-pager -o cat | grep -c 'attaching again;')
        b=$(journalctl -u kvscope --no-pager -o cat | grep -c 'attached again after')
        if [ "$a" -gt 0 ] && [ "$a" = "$b" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        [ $quiet -ge 6 ] && return 0
        sleep 0.5
    done
    return 1
}

edu_bdfs() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && basename "$d"
    done
}
hostdev_xml() { # BDF
    local b=$1
    echo "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x${b:0:4}' bus='0x${b:5:2}' slot='0x${b:8:2}' function='0x${b:11:1}'/></source></hostdev>"
}
# The guest OS's part of an ACPI PCI unplug, as a boot sector: QEMU's PIIX4
# hot-plug registers (pcihp) say which slots have a removal pending (0xae04);
# writing a slot's bit to the eject register (0xae08) is what the guest's
# _EJ0 method does, and completes the removal. The loop halts between reads
# (the BIOS timer wakes it). Without it no unplug ever completes: libvirt's
# domains here run no OS.
#   sti; 1: mov dx,0xae04; in eax,dx; test eax,eax; jz 2f
#   mov dx,0xae08; out dx,eax; 2: hlt; jmp 1b
ospm_disk() {
    printf '\xfb\xba\x04\xae\x66\xed\x66\x85\xc0\x74\x05\xba\x08\xae\x66\xef\xf4\xeb\xee' >/tmp/ospm.img
    truncate -s 510 /tmp/ospm.img
    printf '\x55\xaa' >>/tmp/ospm.img
}
define() { # NAME [BDF] [DISK]
    local dev="" disk=""
    [ -n "${2:-}" ] && dev=$(hostdev_xml "$2")
    [ -n "${3:-}" ] && disk="<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$3'/><target dev='hda' bus='ide'/></disk>"
    cat > "/tmp/$1.xml" <<XML
<domain type='kvm'>
  <name>$1</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    $dev
    $disk
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh -q define "/tmp/$1.xml" >/dev/null
}
qemu_pid() { cat "/run/libvirt/qemu/$1.pid" 2>/dev/null; }
gone() { # NAME: its QEMU has exited (bounded)
    local i p
    p=$(qemu_pid "$1")
    for i in $(seq 1 60); do
        [ -z "$p" ] || ! kill -0 "$p" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
teardowns() { metric kvscope_vm_teardown_seconds_count; }
findings() { # mode's findings so far, as kind=N ...
    curl -sf "$METRICS" | awk -F'[{}"= ]+' '/^kvscope_findings_total\{/ { for (i = 2; i < NF; i++) if ($i == "kind") k = $(i + 1); printf "%s=%s ", k, $NF }'
}

scenario() { # NAME MODE: runs scenario_NAME, prints its counts
    local t0 f0 t1
    t0=$(teardowns) f0=$(findings)
    "scenario_$1" "$1" "$2"
    agree "$1" "$2"
    t1=$(teardowns)
    echo "COUNT $1 $2 teardowns=$t0->$t1 kernel_vms=$(kernel_vms) findings_before=[${f0}] findings_after=[$(findings)]"
    local f1 ok=0
    f1=$(findings)
    if [ "$f0" != "$f1" ]; then
        tail -n 3 /var/lib/kvscope/findings.jsonl | cut -c1-1500 | sed 's/^/FINDING /'
        # Only a running domain's teardown may end under VFIO's locks: its
        # exit (vCPU threads, KVM's NX-recovery worker) can leave the VFIO
        # device's release the last put of the VM (S3). Then the finding must
        # name VFIO's locks; any other finding is false here.
        ok=1
        local other0=${f0//destroy-under-lock=[0-9]/} other1=${f1//destroy-under-lock=[0-9]/}
        if [ "$1" = destroy ] && [ "${other0// /}" = "${other1// /}" ] &&
            tail -n 1 /var/lib/kvscope/findings.jsonl | grep -q '"kind":"destroy-under-lock".*vfio_device_set.lock'; then
            ok=0
        fi
    fi
    # Otherwise libvirt closes the device before the VM's last reference
    # goes: no finding is true.
    check "$1/$2/findings" $ok "before [${f0}] after [${f1}]"
}

# A VM kept alive by its kvm-vfio device after its own fd was closed (a
# client that leaks the device fd): the zombie-vm finding, true here. perl
# (perl-base, in every Debian) makes the ioctls: KVM_CREATE_VM, then
# KVM_CREATE_DEVICE(KVM_DEV_TYPE_VFIO).
held_vm() {
    perl -e '
        open(my $kvm, "+<", "/dev/kvm") or die "/dev/kvm: $!";
        my $vm = ioctl($kvm, 0xAE01, 0) or die "KVM_CREATE_VM: $!";
        $vm = 0 if $vm eq "0 but true";
        open(my $vmfh, "+<&=", $vm) or die "fd $vm: $!";
        my $cd = pack("LLL", 4, 0, 0);
        ioctl($vmfh, 0xC00CAEE0, $cd) or die "KVM_CREATE_DEVICE: $!";
        close($vmfh);
        sleep 14;
    '
}

scenario_destroy() { # start (running), virsh destroy
    virsh -q start lab-a >/dev/null
    agree "$1" "$2/running"
    virsh -q destroy lab-a >/dev/null
    gone lab-a
}
scenario_sigkill() { # start paused, SIGKILL its QEMU; recorded in the mode
    local rec out=/tmp/sigkill-$2
    kvscope record --locks "$2" -o "$out.kvs" 2>"$out.err" &
    rec=$!
    for i in $(seq 1 120); do grep -q 'ready:' "$out.err" && break; sleep 0.5; done
    virsh -q start --paused lab-a >/dev/null
    agree "$1" "$2/running"
    kill -9 "$(qemu_pid lab-a)"
    gone lab-a
    sleep 1
    kill -INT $rec
    wait $rec
    # Every reference QEMU's VM held, from creation to the kill's teardown,
    # is named (vCPU and stats fds included): no "unattributed" change.
    kvscope replay "$out.kvs" --json >"$out.json" 2>>"$out.err"
    local changes
    changes=$(tr -d '\n' <"$out.json" | grep -o '"changes": *\[[^]]*\]' | tr -s ' ')
    check "$1/$2/holders" \
        "$(echo "$changes" | grep -q 'vcpu 0 fd' && ! echo "$changes" | grep -q unattributed; echo $?)" \
        "QEMU's VM in kvscope record --locks $2: ${changes:-no VM; $(tail -2 "$out.err" | tr '\n' ' ')}"
}
scenario_hotplug() { # running without a device: one attached, then detached, live
    virsh -q start lab-c >/dev/null
    agree "$1" "$2/before"
    hostdev_xml "$EDU0" > /tmp/hostdev.xml
    virsh -q attach-device lab-c /tmp/hostdev.xml --live >/dev/null
    check "$1/$2/attach" $? "virsh attach-device $EDU0"
    agree "$1" "$2/attached"
    # The unplug completes when the guest ejects the slot (ospm_disk); then
    # QEMU closes the device and libvirt gives it back to the host.
    local rc i left
    virsh -q detach-device lab-c /tmp/hostdev.xml --live >/tmp/detach.log 2>&1
    rc=$?
    for i in $(seq 1 120); do
        left=$(virsh dumpxml lab-c | grep -c '<hostdev')
        [ "$left" = 0 ] && [ "$(kernel_vfio_fds)" = 0 ] && break
        sleep 0.5
    done
    check "$1/$2/detach" "$([ $rc = 0 ] && [ "$left" = 0 ] && [ "$(kernel_vfio_fds)" = 0 ]; echo $?)" \
        "virsh detach-device $EDU0: rc $rc ($(tr '\n' ' ' </tmp/detach.log)); hostdevs left in the domain $left, VFIO device fds $(kernel_vfio_fds), QEMU $(qemu_pid lab-c) $(kill -0 "$(qemu_pid lab-c)" 2>/dev/null && echo running || echo gone)"
    agree "$1" "$2/detached"
    virsh -q destroy lab-c >/dev/null
    gone lab-c
}
scenario_two() { # two domains, each with an edu device, destroyed in turn
    virsh -q start --paused lab-a >/dev/null
    virsh -q start --paused lab-b >/dev/null
    agree "$1" "$2/both"
    local a b
    a=$(metric 'kvscope_domain_vms{domain="lab-a"}') b=$(metric 'kvscope_domain_vms{domain="lab-b"}')
    virsh -q destroy lab-b >/dev/null
    gone lab-b
    agree "$1" "$2/one"
    # Per-domain series: one VM each while both run; lab-b's gone with it.
    local b1
    b1=$(metric 'kvscope_domain_vms{domain="lab-b"}')
    check "$1/$2/domains" "$([ "$a" = 1 ] && [ "$b" = 1 ] && [ "$b1" = absent ] &&
        [ "$(metric 'kvscope_domain_vms{domain="lab-a"}')" = 1 ]; echo $?)" \
        "kvscope_domain_vms: both running lab-a $a lab-b $b; lab-b destroyed: lab-b $b1, lab-a $(metric 'kvscope_domain_vms{domain="lab-a"}'); $(curl -sf "$METRICS" | grep '^kvscope_domain_' | tr '\n' ' ')"
    virsh -q destroy lab-a >/dev/null
    gone lab-a
}
scenario_restart() { # libvirtd restarted while a domain runs
    virsh -q start --paused lab-a >/dev/null
    local p
    p=$(qemu_pid lab-a)
    systemctl restart libvirtd
    # libvirtd takes the domain back (its QEMU monitor) before answering.
    local state
    state=$(timeout 60 virsh domstate lab-a --reason 2>&1)
    check "$1/$2/survives" "$([ "$(qemu_pid lab-a)" = "$p" ] && kill -0 "$p"; echo $?)" \
        "QEMU $p after libvirtd restarted: $state"
    kill -0 "$p" 2>/dev/null || journalctl -u libvirtd --no-pager -n 8 -o cat | sed 's/^/LIBVIRTD /'
    agree "$1" "$2/restarted"
    virsh -q destroy lab-a >/dev/null 2>&1
    gone lab-a
}

echo KVSCOPE-LAB-BEGIN
udevadm settle --timeout=120
echo "FACT kernel $(uname -r)"
echo "FACT modules $(lsmod | awk '/^(kvm|vfio)/ { printf "%s ", $1 }')"
echo "FACT versions systemd=$(dpkg-query -W -f '${Version}' systemd) libvirt=$(dpkg-query -W -f '${Version}' libvirt-daemon) qemu=$(dpkg-query -W -f '${Version}' qemu-system-x86)"
mapfile -t EDU < <(edu_bdfs)
EDU0=${EDU[0]} EDU1=${EDU[1]}
echo "FACT edu $EDU0 $EDU1"
echo "FACT sysctl perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid) kptr_restrict=$(cat /proc/sys/kernel/kptr_restrict)"

# The package, as a user installs it: nothing runs until enabled.
dpkg -i /lab/kvscope.deb >/tmp/dpkg.log 2>&1
check install $? "dpkg -i kvscope.deb: $(tail -1 /tmp/dpkg.log)"
# The heap's split after each give-back (in use / free / mapped), for the
# idle-RSS facts below: the only change to the unit as shipped.
mkdir -p /etc/systemd/system/kvscope.service.d
printf '[Service]\nEnvironment=KVSCOPE_LOG=warn,kvscope::memory=debug\n' >/etc/systemd/system/kvscope.service.d/lab.conf
systemctl daemon-reload
check install/not-started "$([ "$(systemctl is-active kvscope)" != active ]; echo $?)" \
    "after install: $(systemctl is-active kvscope), $(systemctl is-enabled kvscope)"
t=$(date +%s%N)
systemctl enable --now kvscope >/tmp/enable.log 2>&1
rc=$?
ms=$((($(date +%s%N) - t) / 1000000))
check service/ready "$([ $rc = 0 ] && [ "$(prop kvscope SubState)" = running ]; echo $?)" \
    "enable --now returned $rc after $ms ms (Type=notify: READY=1); $(prop kvscope ActiveState)/$(prop kvscope SubState); status: $(prop kvscope StatusText)"
if [ "$(prop kvscope SubState)" != running ]; then
    # Nothing below means anything without the service: say why, stop.
    journalctl -u kvscope --no-pager -n 40 | sed 's/^/JOURNAL /'
    echo KVSCOPE-LAB-RC=1
    echo KVSCOPE-LAB-END
    systemctl poweroff -ff
fi
check service/delivery "$([ "$(metric kvscope_delivery_verified)" = 1 ]; echo $?)" \
    "kvscope_delivery_verified $(metric kvscope_delivery_verified), tier $(metric kvscope_tier), lock watch: $(curl -sf $METRICS | grep '^kvscope_lock_watch' | tr '\n' ' ')"
# The daemon pings at half of WatchdogSec: compared again before the stop.
w0=$(prop kvscope WatchdogTimestampMonotonic)
r0=$(metric kvscope_config_reloads_total)
systemctl reload kvscope
rc=$?
sleep 1
check service/reload "$([ $rc = 0 ] && [ "$(metric kvscope_config_reloads_total)" != "$r0" ]; echo $?)" \
    "systemctl reload: rc $rc, kvscope_config_reloads_total $r0 -> $(metric kvscope_config_reloads_total)"
# The always-on footprint: resident memory once idle, printed at each step
# and checked at the end (goal: 25 MiB throughout).
rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$(prop kvscope MainPID)/status"; }
# Idle: the same VmRSS for three seconds running (bounded: 40 s). Right after
# READY the kallsyms table read after attach is still coming in, and until it
# replaces the one read before, both are held; after a burst the daemon gives
# freed heap back at its first idle tick (seen: 27 MB held still for a second,
# 19 MB once trimmed).
rss_idle() {
    local i a b same=0
    a=$(rss VmRSS)
    for i in $(seq 1 40); do
        sleep 1
        b=$(rss VmRSS)
        if [ "$a" = "$b" ]; then same=$((same + 1)); else same=0; fi
        [ $same -ge 3 ] && break
        a=$b
    done
    echo "$b"
}
rss0=$(rss_idle)
# Anonymous memory in transparent huge pages: khugepaged fills a 2 MiB
# range around a few touched pages of a trimmed heap (Debian's kernels set
# THP to always).
thp() { echo "AnonHugePages $(awk '$1 == "AnonHugePages:" { print $2 }' "/proc/$(prop kvscope MainPID)/smaps_rollup") kB"; }
heap() { journalctl -u kvscope --no-pager -o cat | grep -o 'heap: .*' | tail -1; }
# Idle RSS at a step of the script, with the heap's last split.
# The largest, and where, for the check at the end: every step counts.
rss_max=$rss0 rss_max_at="after start"
rss_fact() {
    local r
    r=$(rss_idle)
    [ "$r" -gt "$rss_max" ] && rss_max=$r rss_max_at=$1
    echo "FACT idle-rss $1: VmRSS $r kB, RssAnon $(rss RssAnon) kB, $(thp); $(heap)"
}
# Split: anonymous (heap, what kvscope holds), file (its binary's pages
# touched so far, reclaimable), and the BPF maps it has mapped (the ring).
rss_split() { echo "RssAnon $(rss RssAnon) kB, $(thp), RssFile $(rss RssFile) kB, RssShmem $(rss RssShmem) kB, VmHWM $(rss VmHWM) kB"; }
echo "FACT idle-rss after start: VmRSS ${rss0} kB ($(rss_split)); THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"

# A real host loads vfio_pci when libvirt first assigns a device, after the
# service started: kvscope must see the module come and attach again.
virsh -q nodedev-detach "pci_${EDU0//[:.]/_}" >/dev/null
check module/bound $? "virsh nodedev-detach $EDU0 (libvirt loads vfio-pci): $(lsmod | awk '/^vfio/ { printf "%s ", $1 }')"
kvscope_settled
check module/reattached "$(journalctl -u kvscope --no-pager -o cat | grep -q 'attached again after'; echo $?)" \
    "$(journalctl -u kvscope --no-pager -o cat | grep -E 'attaching again|attached again' | cut -c1-300 | tr '\n' ' ')"
echo "FACT module-changes $(curl -sf $METRICS | grep -E '^kvscope_(module_changes_total|blind_seconds_total)' | tr '\n' ' ')"
check module/delivery "$([ "$(metric kvscope_delivery_verified)" = 1 ]; echo $?)" \
    "after attaching again: kvscope_delivery_verified $(metric kvscope_delivery_verified), tier $(metric kvscope_tier)"
rss_fact "after vfio_pci loaded"
define lab-a "$EDU0"
define lab-b "$EDU1"
ospm_disk
define lab-c "" /tmp/ospm.img
for mode in lean deep; do
    if [ $mode = deep ]; then
        # The operator's edit, kept through the upgrade below.
        sed -i 's/^lock_watch = "lean"/lock_watch = "deep"/' /etc/kvscope/kvscope.toml
        systemctl reload kvscope
        sleep 2
        check deep/switched "$([ "$(metric 'kvscope_lock_watch{mode="deep"}')" = 1 ]; echo $?)" \
            "after the edit and reload: $(curl -sf $METRICS | grep '^kvscope_lock_watch' | tr '\n' ' ')"
    fi
    for s in destroy sigkill hotplug two restart; do scenario $s $mode; done
    rss_fact "after the $mode scenarios"
done

# kvscope top beside the service, as an operator runs it: a domain started
# after it attached gets its row, named by libvirt, with its holders.
kvscope top --batch 30 --interval 1 --vm lab-a >/tmp/top.txt 2>/tmp/top.err &
tp=$!
for i in $(seq 1 60); do grep -q 'ready:' /tmp/top.err && break; sleep 0.5; done
virsh -q start --paused lab-a >/dev/null
qp=$(qemu_pid lab-a)
row=""
for i in $(seq 1 20); do
    sleep 1
    row=$(awk '/^kvscope top:/ { t = "" } { t = t $0 "\n" } END { printf "%s", t }' /tmp/top.txt | grep "^lab-a .* $qp ")
    echo "$row" | grep -q 'vcpu 0 fd 1' && break
done
# The row names every holder: QEMU's vCPU fd and the vCPU stats fd it
# keeps open, nothing unattributed.
check top/row "$(echo "$row" | grep -q 'vm fd 1' && echo "$row" | grep -q 'stats fd 1' &&
    ! echo "$row" | grep -q unattributed; echo $?)" \
    "kvscope top --vm lab-a, QEMU $qp: ${row:-no row; $(tail -3 /tmp/top.err | tr '\n' ' ')}"
echo "FACT top-holders lab-a (paused, edu device assigned): $(echo "$row" | sed 's/.*  //')"
virsh -q destroy lab-a >/dev/null
gone lab-a
kill -INT $tp 2>/dev/null
wait $tp

# kvm reloaded under the running service (a module update, a parameter
# change): the daemon attaches again and sees the VMs made afterwards.
reattached() { journalctl -u kvscope --no-pager -o cat | grep -c 'attached again after'; }
n0=$(reattached)
# `kvscope record` beside the service sees the same reload: it attaches
# again too, and its recording says the gap.
kvscope record -o /tmp/reload.kvs 2>/tmp/record.err &
rec=$!
for i in $(seq 1 120); do grep -q 'ready:' /tmp/record.err && break; sleep 0.5; done
modprobe -r kvm_amd kvm && modprobe kvm_amd
rc=$?
kvscope_settled
for i in $(seq 1 120); do grep -q 'attached again after' /tmp/record.err && break; sleep 0.5; done
check reload/reattached "$([ $rc = 0 ] && [ "$(reattached)" -gt "$n0" ]; echo $?)" \
    "modprobe -r kvm_amd kvm; modprobe kvm_amd: rc $rc; $(curl -sf $METRICS | grep -E '^kvscope_module_changes_total.*kvm' | tr '\n' ' ')"
virsh -q start --paused lab-a >/dev/null
qp=$(qemu_pid lab-a)
agree reload after
virsh -q destroy lab-a >/dev/null
gone lab-a
agree reload done
kill -INT $rec
wait $rec
rss_fact "after kvm reloaded"
replay=$(kvscope replay /tmp/reload.kvs 2>&1)
# QEMU's VM, made after the gap: seen from its creation to its destroy.
vm=$(kvscope report /tmp/reload.kvs --format json --pid "$qp" 2>&1)
check reload/record "$(echo "$replay" | grep -q '^BLIND .*module kvm' &&
    echo "$vm" | grep -q '"state": "destroyed"' && echo "$vm" | grep -q 'vfio device'; echo $?)" \
    "$(grep -o 'attached again after.*' /tmp/record.err | head -1); replay: $(echo "$replay" | grep -E '^(BLIND|events)' | tr '\n' ' ')"
# ... and named as the operator knows it: the libvirt domain, QEMU's -name
# and -uuid, the process.
check names/record "$(echo "$replay" | grep -q "gen [0-9]* lab-a (domain lab-a, uuid .*, qemu-system-x86\[$qp\])"; echo $?)" \
    "$(echo "$replay" | grep -o "VM 0x[0-9a-f]* gen [0-9]* lab-a ([^)]*)" | head -1)"

z0=$(metric 'kvscope_findings_total{kind="zombie-vm",severity="warning"}')
held_vm
check zombie/finding "$([ "$(metric 'kvscope_findings_total{kind="zombie-vm",severity="warning"}')" != "$z0" ]; echo $?)" \
    "a VM held by its kvm-vfio device 14 s after its fd closed: zombie-vm findings $z0 -> $(metric 'kvscope_findings_total{kind="zombie-vm",severity="warning"}')"

# Findings in the journal with their structured fields, selectable by kind.
kind=$(journalctl -u kvscope -o json --no-pager | grep -o '"KVSCOPE_KIND":"[^"]*"' | head -1 | cut -d'"' -f4)
entry=$(journalctl -u kvscope -o json --no-pager "KVSCOPE_KIND=${kind:-none}" | head -1)
fields=$(for f in MESSAGE_ID PRIORITY KVSCOPE_KIND KVSCOPE_SEVERITY KVSCOPE_VM KVSCOPE_VM_NAME; do
    echo "$entry" | grep -o "\"$f\":\"[^\"]*\"" || echo "no $f"
done | tr '\n' ' ')
check journal/fields "$([ -n "$kind" ] && ! echo "$fields" | grep -q 'no '; echo $?)" \
    "journalctl -u kvscope KVSCOPE_KIND=${kind:-(no finding in the journal)}: $fields"
# ... and once idle again after every scenario and module change.
rss1=$(rss_idle)
[ "$rss1" -gt "$rss_max" ] && rss_max=$rss1 rss_max_at="at the end"
echo "FACT idle-rss after the scenarios and module changes: VmRSS ${rss1} kB ($(rss_split)); ${rss0} kB after start"
# Issue 22's goal for the always-on footprint: 25 MiB idle at every step.
check service/idle-rss "$([ "$rss_max" -le 25600 ]; echo $?)" \
    "idle VmRSS ${rss0} kB after start, ${rss1} kB after the scenarios and module changes, at most ${rss_max} kB (${rss_max_at}) (goal: 25600 kB at every step); $(heap)"
mem=$(prop kvscope MemoryCurrent) peak=$(prop kvscope MemoryPeak) max=$(prop kvscope MemoryMax)
check service/memory "$([ "$max" = 536870912 ] && [ "$peak" -lt "$max" ] && [ "$(prop kvscope NRestarts)" = 0 ]; echo $?)" \
    "MemoryCurrent $((mem / 1048576)) MiB, MemoryPeak $((peak / 1048576)) MiB, MemoryMax $((max / 1048576)) MiB, restarts $(prop kvscope NRestarts)"
# A restart means the daemon died: what it said last before, for the reader.
[ "$(prop kvscope NRestarts)" = 0 ] ||
    journalctl -u kvscope --no-pager -o cat | grep -iE -B2 'error|fail|panic|exit|status=' | tail -20 | sed 's/^/RESTART /'
w1=$(prop kvscope WatchdogTimestampMonotonic)
check service/watchdog "$([ "$w0" != 0 ] && [ "$w1" -gt "$w0" ]; echo $?)" \
    "WatchdogTimestampMonotonic $w0 -> $w1 (WatchdogUSec $(prop kvscope WatchdogUSec))"
t=$(date +%s%N)
systemctl stop kvscope
rc=$?
ms=$((($(date +%s%N) - t) / 1000000))
check service/stop "$([ $rc = 0 ] && [ "$(prop kvscope Result)" = success ] && [ $ms -lt 20000 ]; echo $?)" \
    "systemctl stop: rc $rc in $ms ms (TimeoutStopSec $(prop kvscope TimeoutStopUSec)); Result=$(prop kvscope Result)"

# Upgrade: a newer build restarts the running service, the edit stays.
systemctl start kvscope
p0=$(prop kvscope MainPID)
dpkg -i /lab/kvscope-newer.deb >/tmp/dpkg.log 2>&1
rc=$?
p1=$(prop kvscope MainPID)
check upgrade/restarted "$([ $rc = 0 ] && [ "$p1" != "$p0" ] && [ "$p1" != 0 ] && [ "$(systemctl is-active kvscope)" = active ]; echo $?)" \
    "dpkg -i newer: rc $rc ($(tail -1 /tmp/dpkg.log)), MainPID $p0 -> $p1, $(systemctl is-active kvscope), $(dpkg-query -W -f '${Version}' kvscope)"
check upgrade/config-kept "$(grep -q '^lock_watch = "deep"' /etc/kvscope/kvscope.toml; echo $?)" \
    "$(grep '^lock_watch' /etc/kvscope/kvscope.toml)"

dpkg --purge kvscope >/tmp/dpkg.log 2>&1
rc=$?
left=$(ls -d /etc/kvscope /var/lib/kvscope /usr/bin/kvscope /usr/lib/systemd/system/kvscope.service \
    /etc/systemd/system/multi-user.target.wants/kvscope.service 2>/dev/null | tr '\n' ' ')
check purge "$([ $rc = 0 ] && [ -z "$left" ] && [ "$(systemctl is-active kvscope)" != active ]; echo $?)" \
    "dpkg --purge: rc $rc ($(tail -1 /tmp/dpkg.log)); left: [${left}]; service $(systemctl is-active kvscope)"
echo KVSCOPE-LAB-RC=0
echo KVSCOPE-LAB-END
systemctl poweroff -ff
