/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kvscope_testdev before 5.19 (the notifier era; the guest lab's Debian 11
 * row, 5.10): the VFIO driver API of that time has no vfio_device embedded in
 * the driver and no open_device/close_device, and the kvm pointer reaches a
 * driver only through the group notifier (VFIO_GROUP_NOTIFY_SET_KVM). Like
 * kvmgt, the driver is an mdev parent: the mdev core gives each mediated
 * device an IOMMU group and vfio_mdev makes it a VFIO device named by its
 * UUID (the lab creates one through the parent's "notifier" type).
 *
 * mode=notifier  open registers for VFIO_GROUP_NOTIFY_SET_KVM; the callback
 *                takes a kvm reference (kvm_get_kvm) the first time it is
 *                handed a VM and keeps it; release unregisters and drops it
 *                (kvmgt's shape: with the VM fds closed first, the device's
 *                release makes the last put).
 * mode=plain     open and release do nothing with KVM.
 *
 * Included by kvscope_testdev.c on kernels before 5.19.
 */
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <linux/vfio.h>
#include <linux/mdev.h>
#include <linux/kvm_host.h>
#include <linux/notifier.h>

static char *mode = "notifier";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "notifier | plain (kernels before 5.19)");

#define DRV_NAME "kvscope-testdev"
#include "platform.h"

struct testdev_state {
	struct notifier_block nb;
	struct kvm *own_kvm;
};


static bool mode_is(const char *m)
{
	return !strcmp(mode, m);
}

/* Called from vfio_group_set_kvm, or at once from vfio_register_notifier
 * when the group already has a VM: the driver's own reference, kept until
 * release. NULL (the kvm-vfio device forgetting the group) keeps it too:
 * kvmgt drops its reference at release, not here. */
static int testdev_notify(struct notifier_block *nb, unsigned long action,
			  void *data)
{
	struct testdev_state *st = container_of(nb, struct testdev_state, nb);
	struct kvm *kvm = data;

	if (action != VFIO_GROUP_NOTIFY_SET_KVM || !kvm || st->own_kvm)
		return NOTIFY_OK;
	kvm_get_kvm(kvm);
	st->own_kvm = kvm;
	pr_info("kvscope_testdev: notifier took a reference on %px\n", kvm);
	return NOTIFY_OK;
}

static int testdev_create(struct kobject *kobj, struct mdev_device *mdev)
{
	struct testdev_state *st = kzalloc(sizeof(*st), GFP_KERNEL);

	if (!st)
		return -ENOMEM;
	st->nb.notifier_call = testdev_notify;
	mdev_set_drvdata(mdev, st);
	return 0;
}

static int testdev_remove(struct mdev_device *mdev)
{
	kfree(mdev_get_drvdata(mdev));
	return 0;
}

static int testdev_open(struct mdev_device *mdev)
{
	struct testdev_state *st = mdev_get_drvdata(mdev);
	unsigned long events = VFIO_GROUP_NOTIFY_SET_KVM;

	if (!mode_is("notifier"))
		return 0;
	return vfio_register_notifier(mdev_dev(mdev), VFIO_GROUP_NOTIFY, &events,
				      &st->nb);
}

static void testdev_release(struct mdev_device *mdev)
{
	struct testdev_state *st = mdev_get_drvdata(mdev);

	if (!mode_is("notifier"))
		return;
	vfio_unregister_notifier(mdev_dev(mdev), VFIO_GROUP_NOTIFY, &st->nb);
	if (st->own_kvm) {
		pr_info("kvscope_testdev: release drops its reference on %px\n",
			st->own_kvm);
		kvm_put_kvm(st->own_kvm);
		st->own_kvm = NULL;
	}
}

static ssize_t name_show(struct kobject *kobj, struct device *dev, char *buf)
{
	return sprintf(buf, "%s\n", kobj->name);
}
MDEV_TYPE_ATTR_RO(name);

static ssize_t available_instances_show(struct kobject *kobj,
					struct device *dev, char *buf)
{
	return sprintf(buf, "%d\n", 1);
}
MDEV_TYPE_ATTR_RO(available_instances);

static ssize_t device_api_show(struct kobject *kobj, struct device *dev,
			       char *buf)
{
	return sprintf(buf, "%s\n", VFIO_DEVICE_API_PLATFORM_STRING);
}
MDEV_TYPE_ATTR_RO(device_api);

static struct attribute *testdev_type_attrs[] = {
	&mdev_type_attr_name.attr,
	&mdev_type_attr_available_instances.attr,
	&mdev_type_attr_device_api.attr,
	NULL,
};

static struct attribute_group testdev_type = {
	.name = "notifier",
	.attrs = testdev_type_attrs,
};

static struct attribute_group *testdev_types[] = { &testdev_type, NULL };

static const struct mdev_parent_ops testdev_parent_ops = {
	.owner = THIS_MODULE,
	.supported_type_groups = testdev_types,
	.create = testdev_create,
	.remove = testdev_remove,
	.open = testdev_open,
	.release = testdev_release,
};

static int testdev_probe(struct platform_device *p)
{
	int ret = mdev_register_device(&p->dev, &testdev_parent_ops);

	if (!ret)
		pr_info("kvscope_testdev: mdev parent registered (mode=%s)\n", mode);
	return ret;
}

static int testdev_platform_remove(struct platform_device *p)
{
	mdev_unregister_device(&p->dev);
	return 0;
}

static struct platform_driver testdev_driver = {
	.probe = testdev_probe,
	.remove = testdev_platform_remove,
	.driver = { .name = DRV_NAME },
};

static int __init testdev_init(void)
{
	if (!mode_is("notifier") && !mode_is("plain")) {
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
MODULE_DESCRIPTION("kvscope guest-lab VFIO test device (notifier era)");
