// SPDX-License-Identifier: GPL-2.0
/*
 * kvscope_testdev: a VFIO device for kvscope's guest lab that puts real driver
 * behaviour on the VFIO <-> KVM path, so that kvscope's findings can be proven
 * against a real kernel.
 *
 * It registers one VFIO device with an emulated IOMMU, the registration mdev
 * drivers such as the kernel's mtty sample use (vfio_register_emulated_iommu_dev),
 * on a platform device of its own: Debian's cloud kernels do not build the mdev
 * bus (CONFIG_VFIO_MDEV is off), and the VFIO core's locking around
 * open_device/close_device does not depend on the bus. The device's name for
 * VFIO_GROUP_GET_DEVICE_FD is "kvscope-testdev"; its group is the platform
 * device's iommu_group.
 *
 * mode=plain      open_device/close_device do nothing with KVM.
 * mode=kvmlock    open_device takes and releases kvm->lock (the vfio_ap pattern,
 *                 scenario S2 in kernel-paths.md): under the VFIO locks.
 * mode=relock     open_device takes kvm->lock, then waits for it again
 *                 (mutex_lock_killable): a thread waiting for itself. The lab
 *                 kills the opener after a few seconds; the open fails -EINTR.
 * mode=abba       two ioctls on the device fd take kvm->lock and dev_set->lock
 *                 in opposite orders, the second wait killable: two threads
 *                 calling them at once really deadlock (ABBA) until the lab
 *                 kills their process; both waits end -EINTR.
 * mode=ownref     open_device takes its own kvm reference, close_device drops it
 *                 (the 6.1 S1 shape): with the VM fds closed first, the last
 *                 reference goes from close_device, under the VFIO locks.
 * With -DKVSCOPE_KVM_OPS (the patched kernel, lab-kernel/vfio-kvm_ops-6.1.patch):
 * mode=kvmops     kvm_ops get_kvm = kvm_get_kvm_safe, put_kvm = kvm_put_kvm of
 *                 the kvm kept from the get (put_kvm carries no pointer).
 * mode=kvmops-lock  kvmops, and open_device also takes kvm->lock (S2).
 * mode=kvmops-fail  get_kvm fails: the patch's open error path still calls put_kvm.
 *
 * It never calls kvm_put_kvm on a kvm it did not get: a put_kvm without a get
 * is logged and ignored, so the guest stays up to show the patch's defect.
 *
 * Before 5.19 (the notifier era) the VFIO driver API is another one: see
 * notifier_era.h (mode=notifier).
 */
#include <linux/version.h>
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 19, 0)
#include "notifier_era.h"
#else
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/vfio.h>
#include <linux/kvm_host.h>
#include <linux/delay.h>

static char *mode = "plain";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "plain | kvmlock | relock | abba | ownref | kvmops | kvmops-lock | kvmops-fail");

/* mode=abba: the device fd's ioctls (any type byte the VFIO core passes on). */
#define TESTDEV_KVM_THEN_DEV_SET 0x4b70
#define TESTDEV_DEV_SET_THEN_KVM 0x4b71

#define DRV_NAME "kvscope-testdev"
#include "platform.h"

struct testdev {
	struct vfio_device vdev;
	struct kvm *own_kvm;
};

static struct testdev *tdev;

static bool mode_is(const char *m)
{
	return !strcmp(mode, m);
}

#ifdef KVSCOPE_KVM_OPS
/* put_kvm(void) carries no kvm: the driver must keep the one it got. */
static struct kvm *ops_kvm;

static int testdev_get_kvm(struct kvm *kvm)
{
	if (mode_is("kvmops-fail")) {
		pr_info("kvscope_testdev: get_kvm %px refused (kvmops-fail)\n", kvm);
		return -EBUSY;
	}
	if (!kvm_get_kvm_safe(kvm))
		return -ENOENT;
	ops_kvm = kvm;
	pr_info("kvscope_testdev: get_kvm %px\n", kvm);
	return 0;
}

static void testdev_put_kvm(void)
{
	struct kvm *kvm = ops_kvm;

	ops_kvm = NULL;
	if (!kvm) {
		/* The patch's defect: put_kvm() with no get_kvm() before it. */
		pr_info("kvscope_testdev: put_kvm without a get_kvm\n");
		return;
	}
	pr_info("kvscope_testdev: put_kvm %px\n", kvm);
	kvm_put_kvm(kvm);
}

static const struct vfio_device_kvm_ops testdev_kvm_ops = {
	.get_kvm = testdev_get_kvm,
	.put_kvm = testdev_put_kvm,
};

static struct kvm *device_kvm(struct vfio_device *vdev)
{
	return ops_kvm;
}
#else
static struct kvm *device_kvm(struct vfio_device *vdev)
{
	return vdev->kvm;
}
#endif

/*
 * What vfio_ap_mdev_set_kvm does to publish its crypto hooks to the VM: take
 * kvm->lock under the VFIO open locks. Not inlined, and shaped like it
 * (device first, then kvm): kvscope's lock table names both functions.
 */
static noinline void testdev_lock_kvm(struct vfio_device *vdev, struct kvm *kvm)
{
	mutex_lock(&kvm->lock);
	pr_info("kvscope_testdev: open_device holds kvm->lock of %px (%s)\n", kvm,
		dev_name(vdev->dev));
	mutex_unlock(&kvm->lock);
}

static int testdev_open_device(struct vfio_device *vdev)
{
	struct testdev *t = container_of(vdev, struct testdev, vdev);
	struct kvm *kvm = device_kvm(vdev);

	if (!kvm)
		return 0;
	if (mode_is("kvmlock") || mode_is("kvmops-lock"))
		testdev_lock_kvm(vdev, kvm);
	if (mode_is("relock")) {
		/* A driver bug: re-taking a mutex it holds. Killable, so the
		 * opener recovers when it is killed. */
		mutex_lock(&kvm->lock);
		pr_info("kvscope_testdev: open_device re-takes kvm->lock of %px\n", kvm);
		if (!mutex_lock_killable(&kvm->lock))
			mutex_unlock(&kvm->lock); /* not reached: it waits for itself */
		mutex_unlock(&kvm->lock);
		return -EINTR;
	}
	if (mode_is("ownref")) {
		kvm_get_kvm(kvm);
		t->own_kvm = kvm;
		pr_info("kvscope_testdev: open_device took a reference on %px\n", kvm);
	}
	return 0;
}

static void testdev_close_device(struct vfio_device *vdev)
{
	struct testdev *t = container_of(vdev, struct testdev, vdev);

	if (t->own_kvm) {
		pr_info("kvscope_testdev: close_device drops its reference on %px\n",
			t->own_kvm);
		kvm_put_kvm(t->own_kvm);
		t->own_kvm = NULL;
	}
}

/*
 * mode=abba: take one watched lock, give the other thread time to take the
 * other, then wait (killably) for the other: with both ioctls running at once
 * each thread waits for the lock the other holds.
 */
static long testdev_ioctl(struct vfio_device *vdev, unsigned int cmd,
			  unsigned long arg)
{
	struct kvm *kvm = device_kvm(vdev);
	struct mutex *first, *second;

	if (!mode_is("abba") || !kvm)
		return -ENOTTY;
	switch (cmd) {
	case TESTDEV_KVM_THEN_DEV_SET:
		first = &kvm->lock;
		second = &vdev->dev_set->lock;
		break;
	case TESTDEV_DEV_SET_THEN_KVM:
		first = &vdev->dev_set->lock;
		second = &kvm->lock;
		break;
	default:
		return -ENOTTY;
	}
	mutex_lock(first);
	msleep(300);
	pr_info("kvscope_testdev: ioctl %#x holds %px, waits for %px\n", cmd,
		first, second);
	if (mutex_lock_killable(second)) {
		mutex_unlock(first);
		return -EINTR;
	}
	mutex_unlock(second);
	mutex_unlock(first);
	return 0;
}

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
/* 6.1 requires drivers to free the device from release (vfio-ccw's life cycle). */
static void testdev_release(struct vfio_device *vdev)
{
	vfio_free_device(vdev);
}
#endif

static const struct vfio_device_ops testdev_ops = {
	.name = DRV_NAME,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
	.release = testdev_release,
#endif
	.open_device = testdev_open_device,
	.close_device = testdev_close_device,
	.ioctl = testdev_ioctl,
};

static int testdev_probe(struct platform_device *p)
{
	int ret;

	tdev = vfio_alloc_device(testdev, vdev, &p->dev, &testdev_ops);
	if (IS_ERR(tdev))
		return PTR_ERR(tdev);
#ifdef KVSCOPE_KVM_OPS
	if (!strncmp(mode, "kvmops", 6))
		tdev->vdev.kvm_ops = &testdev_kvm_ops;
#endif
	ret = vfio_register_emulated_iommu_dev(&tdev->vdev);
	if (ret) {
		vfio_put_device(&tdev->vdev);
		tdev = NULL;
		return ret;
	}
	pr_info("kvscope_testdev: registered (mode=%s)\n", mode);
	return 0;
}

static void testdev_remove(struct platform_device *p)
{
	if (tdev) {
		vfio_unregister_group_dev(&tdev->vdev);
		vfio_put_device(&tdev->vdev);
		tdev = NULL;
	}
}

static struct platform_driver testdev_driver = {
	.probe = testdev_probe,
	.remove_new = testdev_remove,
	.driver = { .name = DRV_NAME },
};

static int __init testdev_init(void)
{
	static const char *const modes[] = {
		"plain", "kvmlock", "relock", "abba", "ownref",
#ifdef KVSCOPE_KVM_OPS
		"kvmops", "kvmops-lock", "kvmops-fail",
#endif
	};
	int i;

	for (i = 0; i < ARRAY_SIZE(modes) && !mode_is(modes[i]); i++)
		;
	if (i == ARRAY_SIZE(modes)) {
		pr_err("kvscope_testdev: unknown mode=%s for this kernel\n", mode);
		return -EINVAL;
	}
	return testdev_register_platform(&testdev_driver);
}

static void __exit testdev_exit(void)
{
	testdev_unregister_platform(&testdev_driver);
}

module_init(testdev_init);
module_exit(testdev_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kvscope guest-lab VFIO test device");
#endif /* 5.19+ */
