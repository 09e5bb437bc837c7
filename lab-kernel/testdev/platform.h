/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kvscope_testdev's platform device and driver, registered the same way on
 * every kernel line (the VFIO side differs: kvscope_testdev.c, 5.19+;
 * notifier_era.h before).
 */
#include <linux/platform_device.h>

static struct platform_device *pdev;

static int testdev_register_platform(struct platform_driver *drv)
{
	int ret = platform_driver_register(drv);

	if (ret)
		return ret;
	pdev = platform_device_register_simple(DRV_NAME, -1, NULL, 0);
	if (IS_ERR(pdev)) {
		platform_driver_unregister(drv);
		return PTR_ERR(pdev);
	}
	return 0;
}

static void testdev_unregister_platform(struct platform_driver *drv)
{
	platform_device_unregister(pdev);
	platform_driver_unregister(drv);
}
