from django.contrib import admin

from apps.playground.models import Battle, Comparison, Conversation, Document, Feedback, FeedbackExport, HttpTool, Message


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "kind", "deployment", "protocol", "updated_at")
    list_filter = ("kind",)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "column", "deployment", "model_version", "job", "created_at")
    list_filter = ("role", "status")
    raw_id_fields = ("conversation", "parent", "job")


@admin.register(HttpTool)
class HttpToolAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "method", "url_template", "created_at")


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("name", "conversation", "kind", "size", "created_at")
    readonly_fields = ("stored_name",)


@admin.register(Battle)
class BattleAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "version_a", "version_b", "outcome", "revealed", "created_at")


admin.site.register(Comparison)
admin.site.register(Feedback)
admin.site.register(FeedbackExport)
