// The charts in the page's language: dates on time axes (month and day names, the order of
// day, month and year), the mode bar's buttons and plotly's notices. plotly.min.js (plotly's
// Python package, served from static/vendor/plotly) ships English only, so the Chinese locale is
// registered here, never fetched. base.html loads this after the page's plotly.min.js and before
// the scripts that draw, so every chart takes it; a page without plotly is left alone.
(function () {
  "use strict";
  if (!window.Plotly) return;
  var ZH_CN = {
    moduleType: "locale",
    name: "zh-CN",
    dictionary: {
      "Autoscale": "自动缩放",
      "Box Select": "矩形框选",
      "Click to enter Colorscale title": "点击输入色阶标题",
      "Click to enter Plot title": "点击输入图表标题",
      "Click to enter X axis title": "点击输入 X 轴标题",
      "Click to enter Y axis title": "点击输入 Y 轴标题",
      "Compare data on hover": "悬停时比较数据",
      "Double-click on legend to isolate one trace": "双击图例只显示这一条",
      "Double-click to zoom back out": "双击恢复原始缩放",
      "Download plot": "下载图表",
      "Download plot as a PNG": "下载图表（PNG）",
      "Download plot as a png": "下载图表（PNG）",
      "Download plot as JSON": "下载图表（JSON）",
      "Lasso Select": "套索选择",
      "Pan": "平移",
      "Produced with Plotly.js": "由 Plotly.js 生成",
      "Reset": "重置",
      "Reset axes": "重置坐标轴",
      "Reset view": "重置视图",
      "Reset views": "重置视图",
      "Share chart...": "分享图表…",
      "Show closest data on hover": "悬停时显示最近的数据",
      "Snapshot succeeded": "截图成功",
      "Sorry, there was a problem downloading your snapshot!": "抱歉，下载截图时出了问题！",
      "Taking snapshot - this may take a few seconds": "正在截图，可能需要几秒钟",
      "Toggle Spike Lines": "显示或隐藏辅助线",
      "Toggle show closest data on hover": "切换悬停时显示最近的数据",
      "Zoom": "缩放",
      "Zoom in": "放大",
      "Zoom out": "缩小",
      "max:": "最大值：",
      "mean:": "平均值：",
      "median:": "中位数：",
      "min:": "最小值：",
      "trace": "曲线"
    },
    format: {
      days: ["星期日", "星期一", "星期二", "星期三", "星期四", "星期五", "星期六"],
      shortDays: ["周日", "周一", "周二", "周三", "周四", "周五", "周六"],
      months: ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"],
      shortMonths: ["1月", "2月", "3月", "4月", "5月", "6月", "7月", "8月", "9月", "10月", "11月", "12月"],
      periods: ["上午", "下午"],
      dateTime: "%Y年%-m月%-d日 %A %X",
      date: "%Y-%m-%d",
      time: "%H:%M:%S",
      decimal: ".",
      thousands: ",",
      grouping: [3],
      currency: ["¥", ""],
      // The time axis's own tick labels: "2026年", "2026年12月", "12月4日", "2026年12月4日".
      year: "%Y年",
      month: "%Y年%-m月",
      dayMonth: "%-m月%-d日",
      dayMonthYear: "%Y年%-m月%-d日"
    }
  };
  // The page's language (<html lang>, the language the studio answered in) → plotly's locale.
  var LOCALES = {"zh-hans": "zh-CN", "zh": "zh-CN", "zh-cn": "zh-CN"};
  var locale = LOCALES[(document.documentElement.lang || "").toLowerCase()];
  if (!locale) return;  // English: plotly's own
  window.Plotly.register(ZH_CN);
  window.Plotly.setPlotConfig({locale: locale});
})();
