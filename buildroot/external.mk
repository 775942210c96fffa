include $(sort $(wildcard $(BR2_EXTERNAL_MEMAGENT_PATH)/package/*/*.mk))
